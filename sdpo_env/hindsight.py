"""The hindsight context: the conversation re-prompted so its last user turn also carries the user's follow-up.

The paper (Table 1) appends to the last user turn: "The following is a future user message. Use this to guide your
answer to the user prompt: <o>". The authors' online code wraps that sentence as a block (a blank line,
``=== HINDSIGHT CONTEXT ===``, the sentence in brackets, the follow-up); that block is the default here. The
template is configurable: it must contain ``{follow_up}`` and is appended to the last user turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from sdpo_env.errors import SdpoEnvError

PAPER_SENTENCE = "The following is a future user message. Use this to guide your answer to the user prompt:"
DEFAULT_TEMPLATE = "\n\n=== HINDSIGHT CONTEXT ===\n[" + PAPER_SENTENCE + "]\n{follow_up}"
# The authors' offline wording, for logged conversations where o reacts to an earlier, insufficient answer.
OFFLINE_TEMPLATE = (
    "\n\n=== HINDSIGHT CONTEXT ===\n[The following is a user response to your previous, insufficient attempt. "
    "Improve your response to the user prompt above based on it:]\n{follow_up}"
)


def hindsight_messages(
    messages: Sequence[dict[str, str]], follow_up: str, *, template: str = DEFAULT_TEMPLATE
) -> list[dict[str, str]]:
    """The conversation with the follow-up attached to its last user turn; the whole history is kept.

    Args:
        messages: The conversation the response answered, ending with a user turn.
        follow_up: The user's next message (o).
        template: Text appended to the last user turn; must contain ``{follow_up}``.

    Returns:
        A new list of messages; the input is not modified.

    Raises:
        SdpoEnvError: the conversation does not end with a user turn, or the template lacks ``{follow_up}``.
    """
    if "{follow_up}" not in template:
        raise SdpoEnvError(f"the hindsight template must contain '{{follow_up}}', got {template!r}")
    if not messages or messages[-1].get("role") != "user":
        raise SdpoEnvError("the hindsight context needs a conversation that ends with a user turn")
    out = [dict(m) for m in messages]
    out[-1]["content"] = out[-1]["content"] + template.replace("{follow_up}", follow_up)
    return out
