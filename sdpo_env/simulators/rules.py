"""The offline user simulator: complaints drawn from the persona's phrasings for the preferences a response violates."""

from __future__ import annotations

import numpy as np

from sdpo_env.simulators.base import SIMULATORS, FollowUp, FollowUpRequest


@SIMULATORS.register("rules")
class RuleSimulator:
    """Complains about violated preferences using the persona's own follow-up phrasings; needs no model or network.

    Args:
        max_complaints: Most preferences one follow-up complains about; the number is drawn uniformly from
            1..min(max_complaints, violated) so users sometimes raise two issues at once.
    """

    def __init__(self, max_complaints: int = 2):
        if max_complaints < 1:
            raise ValueError(f"max_complaints must be >= 1, got {max_complaints}")
        self.max_complaints = max_complaints

    def follow_up(self, request: FollowUpRequest, rng: np.random.Generator) -> FollowUp:
        persona = request.persona
        if request.violated is None:
            raise ValueError(f"the rule simulator needs a persona whose preferences all have rules; {persona.name!r} "
                             "has one without: use an LLM simulator (simulator.backend=openai|anthropic|hf)")
        if request.violated:
            n = int(rng.integers(1, min(self.max_complaints, len(request.violated)) + 1))
            picked = [request.violated[i] for i in sorted(rng.choice(len(request.violated), size=n, replace=False))]
            by_name = {p.name: p for p in persona.preferences}
            phrases = [by_name[name].follow_ups[int(rng.integers(len(by_name[name].follow_ups)))] for name in picked]
            return FollowUp(text=" ".join(phrases), kind="complaint", addressed=tuple(picked))
        if rng.random() < persona.satisfied.new_question_rate:
            return FollowUp(text=request.new_question, kind="new_question")
        replies = persona.satisfied.replies
        return FollowUp(text=replies[int(rng.integers(len(replies)))], kind="satisfied")
