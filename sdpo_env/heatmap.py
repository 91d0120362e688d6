"""``python -m sdpo_env.heatmap``: look at the token-level learning signal A_t of SDPO.

Examples::

    python -m sdpo_env.heatmap prompt="How do I water basil?" response="Hey! 🌿 Just water it daily! 😊" \\
        follow_up="Please stop using emojis."                      # one (x, y, o) given on the command line
    python -m sdpo_env.heatmap data=sample index=3 summary=200     # a logged conversation file (and a mean)
    python -m sdpo_env.heatmap run=runs/flip-s1 index=10           # a run folder's interactions.jsonl

For the chosen (x, y) it scores ``A_t = log pi(y_t | x, o, y_<t) - log pi(y_t | x, y_<t)`` twice, side by side:
with the relevant follow-up o and with an unrelated one (the control; ``unrelated=`` or drawn from the shipped
pool). Reinforced tokens are green, penalised ones red, on one colour scale for both rows. It prints the coloured
tokens and mean |A_t| for each follow-up and their ratio, and writes ``heatmap.html`` (standalone) and
``heatmap.png`` under ``out=``. ``summary=N`` also averages the control over the first N tuples of the file (or the
relevant interactions of the run). The module is not called ``inspect``: inside the package that name would
shadow the standard library's ``inspect`` whenever ``sdpo_env/`` itself is on ``sys.path``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sdpo_env.cli import command_main
from sdpo_env.config import COMMAND_LINE, command_line_config
from sdpo_env.errors import ConfigError, Problem
from sdpo_env.hindsight import DEFAULT_TEMPLATE, OFFLINE_TEMPLATE, hindsight_messages
from sdpo_env.logs import FORMATS, read_logs
from sdpo_env.offline import SHIPPED_LOGS
from sdpo_env.personas import default_unrelated_follow_ups, load_persona
from sdpo_env.policy import ChatPolicy
from sdpo_env.schema import option
from sdpo_env.sdpo import selective_log_softmax, token_advantages
from sdpo_env.tiny import DEFAULT_MODEL

TEMPLATES = {"paper": DEFAULT_TEMPLATE, "offline": OFFLINE_TEMPLATE}
Messages = list[dict[str, str]]


@dataclass
class InspectConfig:
    """What to score and where to write it (``key=value`` on the command line)."""

    prompt: str | None = option(None, "the user's request x (with response= and follow_up=)")
    response: str | None = option(None, "the assistant's answer y")
    follow_up: str | None = option(None, "the user's next message o")
    unrelated: str | None = option(None, "the control's unrelated follow-up; null = drawn from the shipped pool")
    data: str | None = option(None, "a logged-conversation .jsonl, or 'sample' (shipped)")
    run: str | None = option(None, "a run folder (its interactions.jsonl)")
    index: int = option(0, "which tuple of data= or interaction of run= to show", min=0)
    summary: int = option(0, "also average the control over the first N tuples (0 = only the example)", min=0)
    format: str = option("auto", "line format of data=", choices=FORMATS)
    model: str = option(DEFAULT_MODEL, "policy model: a shipped name (tiny-v3, tiny, tiny-v2), a folder or a "
                        "Hugging Face id", nonempty=True)
    adapter: str | None = option(None, "a peft adapter folder to load on the model (e.g. a run's adapter/)")
    device: str = option("cpu", "'cpu', 'cuda', 'auto', ...", nonempty=True)
    template: str = option("paper", "hindsight template: 'paper', 'offline' or a text with {follow_up}",
                           nonempty=True)
    out: str = option("inspect", "folder for heatmap.html and heatmap.png", nonempty=True)
    seed: int = option(0, "seeds the draw of unrelated follow-ups", min=0)
    batch_size: int = option(16, "tuples per forward pass (summary)", min=1)

    def check(self) -> list[tuple[str, str]]:
        given = [k for k in ("data", "run") if getattr(self, k)]
        direct = [k for k in ("prompt", "response", "follow_up") if getattr(self, k)]
        problems = []
        if len(given) + bool(direct) != 1:
            problems.append(("", "give exactly one source: prompt=, response= and follow_up= together, or "
                                 "data=FILE, or run=FOLDER"))
        elif direct and len(direct) != 3:
            missing = sorted({"prompt", "response", "follow_up"} - set(direct))
            problems.append((missing[0], "needed with " + ", ".join(f"{k}=" for k in direct)))
        if self.template not in TEMPLATES and "{follow_up}" not in self.template:
            problems.append(("template", "use 'paper', 'offline' or a text containing {follow_up}"))
        return problems


@dataclass
class TokenScores:
    """Per-token advantages of one response under one follow-up."""

    follow_up: str
    tokens: list[str]
    advantages: np.ndarray  # (T,)

    @property
    def abs_mean(self) -> float:
        return float(np.abs(self.advantages).mean()) if len(self.advantages) else 0.0


def token_pieces(policy: ChatPolicy, ids: Sequence[int]) -> list[str]:
    """The text each token adds, by incremental decoding.

    A character spread over several byte tokens (an emoji) is shown on the first of them, where the model decided
    to write it; the continuation tokens get an empty piece.
    """
    pieces: list[str] = []
    previous, pending = "", None
    for i in range(len(ids)):
        text = str(policy.tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=False))
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: its bytes continue in the next token
            pending = len(pieces) if pending is None else pending
            pieces.append("")
            continue
        piece = text[len(previous):] if text.startswith(previous) else text
        if pending is not None:
            pieces[pending], piece, pending = piece, "", None
        pieces.append(piece)
        previous = text
    return pieces


@torch.no_grad()
def advantages(policy: ChatPolicy, items: Sequence[tuple[Messages, str, str]], template: str,
               batch_size: int = 16) -> list[TokenScores]:
    """A_t for each ``(x, y, o)``: one forward under x and one under the hindsight context, per batch."""
    out: list[TokenScores] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        completions = [policy.encode_completion(y) for _, y, _ in chunk]
        plain = [policy.encode(x) for x, _, _ in chunk]
        hindsight = [policy.encode(hindsight_messages(x, o, template=template)) for x, _, o in chunk]
        student_logits, targets, mask = policy.completion_logits(plain, completions)  # (B, T, V)
        student = selective_log_softmax(student_logits, targets)  # (B, T)
        teacher_logits, _, _ = policy.completion_logits(hindsight, completions)
        teacher = selective_log_softmax(teacher_logits, targets)  # (B, T)
        adv = token_advantages(teacher_logprobs=teacher, student_logprobs=student, mask=mask).cpu().numpy()
        for i, (_, _, o) in enumerate(chunk):
            n = len(completions[i])
            out.append(TokenScores(o, token_pieces(policy, completions[i]), adv[i, :n]))
    return out


def control(policy: ChatPolicy, x: Messages, y: str, relevant: str, unrelated: str,
            template: str) -> tuple[TokenScores, TokenScores]:
    """The same (x, y) scored with the relevant follow-up and with an unrelated one."""
    rel, unr = advantages(policy, [(x, y, relevant), (x, y, unrelated)], template)
    return rel, unr


# --- rendering -------------------------------------------------------------------------------------------------


def _rgb(value: float, scale: float) -> tuple[int, int, int]:
    """White at 0, green for reinforced (A > 0), red for penalised (A < 0); saturated at |A| = scale."""
    strength = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    target = (40, 170, 70) if value > 0 else (215, 48, 39)
    return tuple(round(255 + (c - 255) * strength) for c in target)  # type: ignore[return-value]


def rich_text(scores: TokenScores, scale: float) -> Text:
    text = Text()
    for piece, a in zip(scores.tokens, scores.advantages):
        r, g, b = _rgb(float(a), scale)
        text.append(piece.replace("\n", "⏎\n"), style=f"black on rgb({r},{g},{b})")
    return text


def write_html(path: Path, x: Messages, rows: Sequence[TokenScores], scale: float, title: str) -> None:
    """A standalone page: the prompt, then each follow-up's coloured tokens (hover shows A_t)."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             ".t{font-family:monospace;white-space:pre-wrap;line-height:1.8}"
             ".t span{border-radius:3px}</style>", f"<h2>{html.escape(title)}</h2>",
             "<p><b>Context x</b> (last turn):</p><blockquote>" + html.escape(x[-1]["content"]) + "</blockquote>",
             "<p>Green = reinforced (A<sub>t</sub> &gt; 0), red = penalised; one scale for all rows "
             f"(saturated at |A| = {scale:.2f}, the 98th percentile). Hover a token for its value.</p>"]
    for row in rows:
        spans = "".join(f"<span style='background:rgb{_rgb(float(a), scale)}' title='{a:+.3f}'>"
                        f"{html.escape(p)}</span>" for p, a in zip(row.tokens, row.advantages))
        parts.append(f"<h3>follow-up: {html.escape(row.follow_up)}</h3><p>mean |A<sub>t</sub>| = "
                     f"{row.abs_mean:.4f}, sum A<sub>t</sub> = {row.advantages.sum():+.3f}</p>"
                     f"<div class='t'>{spans}</div>")
    if len(rows) == 2:
        parts.append(f"<p><b>ratio of mean |A<sub>t</sub>|, relevant / unrelated: "
                     f"{rows[0].abs_mean / max(rows[1].abs_mean, 1e-12):.2f}</b></p>")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_png(path: Path, rows: Sequence[TokenScores], scale: float, title: str, width: int = 90) -> None:
    """Token heatmap: one panel per follow-up, tokens wrapped into lines, coloured by A_t on one scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.font_manager import FontProperties, findfont
    from matplotlib.ft2font import FT2Font

    font = FontProperties(family="monospace")
    known = set(FT2Font(findfont(font)).get_charmap())

    def visible(piece: str) -> str:  # glyphs the font lacks (emojis) are drawn as a box
        return "".join(ch if ord(ch) in known or ch == "\n" else "□" for ch in piece)

    layouts = []
    for row in rows:
        cells, line, col = [], 0, 0
        for piece, a in zip(row.tokens, row.advantages):
            for k, chunk in enumerate(visible(piece).split("\n")):
                if k:
                    line, col = line + 1, 0
                if col + len(chunk) > width:
                    line, col = line + 1, 0
                if chunk:
                    cells.append((line, col, chunk, float(a)))
                    col += len(chunk)
        layouts.append((cells, line + 1))
    heights = [n + 2 for _, n in layouts]
    char_in = 0.075  # inches per character cell; the font size below makes a monospace glyph fill it
    fig, axes = plt.subplots(len(rows), 1, figsize=(width * char_in, 0.2 * sum(heights) + 1.2),
                             gridspec_kw={"height_ratios": heights, "left": 0, "right": 1}, squeeze=False)
    size = char_in * 72 / 0.6  # DejaVu Sans Mono advances 0.6 em per glyph
    for ax, row, (cells, n_lines) in zip(axes[:, 0], rows, layouts):
        ax.set_xlim(0, width)
        ax.set_ylim(n_lines, -0.2)
        ax.axis("off")
        for line, col, chunk, a in cells:
            color = tuple(c / 255 for c in _rgb(a, scale))
            ax.add_patch(plt.Rectangle((col, line), len(chunk), 0.9, color=color, linewidth=0))
            ax.text(col, line + 0.45, chunk, fontproperties=font, fontsize=size, va="center", ha="left")
        ax.set_title(f"follow-up: {visible(row.follow_up)[:80]!r}   mean |A| = {row.abs_mean:.4f}", fontsize=9,
                     loc="left")
    cmap = LinearSegmentedColormap.from_list("adv", [tuple(c / 255 for c in _rgb(v, 1.0)) for v in (-1, 0, 1)])
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=Normalize(-scale, scale), cmap=cmap), ax=axes[:, 0].tolist(),
                       orientation="horizontal", fraction=0.04, pad=0.02, aspect=60)
    bar.set_label("A_t  (red = penalised, green = reinforced)", fontsize=8)
    fig.suptitle(title, fontsize=10, y=1.0, va="bottom")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# --- sources ---------------------------------------------------------------------------------------------------


def _tuples(config: InspectConfig, limit: int) -> list[tuple[Messages, str, str]]:
    """The first ``limit`` (x, y, o) of the file or run folder."""
    if config.data:
        path = SHIPPED_LOGS.get(config.data, Path(config.data).expanduser())
        stream = read_logs(path, fmt=config.format)
        return [(list(t.messages), t.response, t.follow_up) for t in islice(stream, limit)]
    assert config.run is not None
    path = Path(config.run) / "interactions.jsonl"
    if not path.is_file():
        raise ConfigError([Problem(COMMAND_LINE, "run", f"{path} does not exist; give a run folder")])
    out: list[tuple[Messages, str, str]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("relevant", True):  # the control needs a follow-up about the answer
                out.append((r["messages"], r["response"], r["follow_up"]))
            if len(out) == limit:
                break
    return out


def complaint_phrases() -> set[str]:
    """Every shipped persona follow-up: a logged follow-up among them is a known complaint."""
    from sdpo_env.files import shipped_names

    return {f for name in shipped_names("users") for p in load_persona(name).preferences for f in p.follow_ups}


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: list[str], console: Console) -> int:
        inspect(command_line_config(InspectConfig, args), console)
        return 0

    return command_main(__doc__, argv, body,
                        interrupted="interrupted; the output files may be missing or incomplete: run it again")


def inspect(config: InspectConfig, console: Console) -> dict[str, Any]:
    """Scores the example (and the summary), renders it, writes the files; returns the figures."""
    template = TEMPLATES.get(config.template, config.template)
    pool = default_unrelated_follow_ups()
    rng = np.random.default_rng(config.seed)
    if config.prompt is not None:
        examples = [([{"role": "user", "content": config.prompt}], config.response or "", config.follow_up or "")]
    else:
        examples = _tuples(config, max(config.index + 1, config.summary))
        if len(examples) <= config.index:
            raise ConfigError([Problem(COMMAND_LINE, "index", f"got {config.index}; the source has "
                                                              f"{len(examples)} usable tuple(s)")])
    unrelated = [config.unrelated or pool[int(rng.integers(len(pool)))] for _ in examples]
    policy = ChatPolicy.load(config.model, device=config.device)
    if config.adapter:
        from peft import PeftModel

        policy.model = PeftModel.from_pretrained(policy.model, config.adapter)
    x, y, o = examples[config.index]
    rel, unr = control(policy, x, y, o, unrelated[config.index], template)
    # One colour scale for both rows, saturating at the 98th percentile of |A_t| so one outlier token does not
    # wash out the rest.
    scale = max(float(np.quantile(np.abs(np.concatenate([rel.advantages, unr.advantages])), 0.98)), 1e-6)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ratio = rel.abs_mean / max(unr.abs_mean, 1e-12)
    title = f"SDPO token advantages ({config.model}): relevant vs unrelated follow-up, ratio {ratio:.1f}x"
    write_html(out / "heatmap.html", x, [rel, unr], scale, title)
    write_png(out / "heatmap.png", [rel, unr], scale, title)
    console.print(f"[bold]x[/]: {x[-1]['content']}")
    for label, row in (("relevant", rel), ("unrelated", unr)):
        console.print(f"\n[bold]{label} follow-up[/]: {row.follow_up}   mean |A| = {row.abs_mean:.4f}")
        console.print(rich_text(row, scale))
    figures: dict[str, Any] = {"example": {"relevant": rel.abs_mean, "unrelated": unr.abs_mean, "ratio": ratio}}
    table = Table(title="mean |A_t|: relevant vs unrelated follow-up (the control)")
    for column in ("tuples", "relevant", "unrelated", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(f"example {config.index}", f"{rel.abs_mean:.4f}", f"{unr.abs_mean:.4f}", f"{ratio:.2f}")
    if config.summary:
        chosen = examples[: config.summary]
        scored_rel = advantages(policy, chosen, template, config.batch_size)
        scored_unr = advantages(policy, [(x2, y2, u) for (x2, y2, _), u in zip(chosen, unrelated)], template,
                                config.batch_size)
        complaints = complaint_phrases()
        groups = {"all": range(len(chosen)),
                  "complaints": [i for i, (_, _, o2) in enumerate(chosen) if o2 in complaints]}
        for name, rows in groups.items():
            if not rows:
                continue
            a = float(np.mean([scored_rel[i].abs_mean for i in rows]))
            b = float(np.mean([scored_unr[i].abs_mean for i in rows]))
            figures[name] = {"n": len(rows), "relevant": a, "unrelated": b, "ratio": a / max(b, 1e-12),
                             "per_example_ratio_median": float(np.median(
                                 [scored_rel[i].abs_mean / max(scored_unr[i].abs_mean, 1e-12) for i in rows]))}
            table.add_row(f"mean over {len(rows)} ({name})", f"{a:.4f}", f"{b:.4f}", f"{a / max(b, 1e-12):.2f}")
    console.print(table)
    (out / "control.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
    console.print(f"wrote {out / 'heatmap.html'}, {out / 'heatmap.png'}, {out / 'control.json'}")
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
