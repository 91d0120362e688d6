"""Plots of a run: win rate against the base model, and per-preference satisfaction, over interactions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from sdpo_env.bench_metrics import surprise_gap


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r.get(key) is not None:
            xs.append(r["interaction"])
            ys.append(r[key])
    return xs, ys


def _phase_lines(ax: Any, phases: Sequence[dict[str, Any]]) -> None:
    for p in phases[1:]:
        ax.axvline(p["start"], color="grey", linestyle=":", linewidth=1)
    for p in phases:
        ax.annotate(p["label"], xy=(p["start"], 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=7, color="dimgrey")


def _by_phase(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive rows of the same phase (a phase change starts a new segment)."""
    segments: list[list[dict[str, Any]]] = []
    for r in rows:
        if not segments or segments[-1][-1]["phase"] != r["phase"]:
            segments.append([])
        segments[-1].append(r)
    return segments


def plot_win_rate(rows: Sequence[dict[str, Any]], phases: Sequence[dict[str, Any]], path: Path, title: str, *,
                  surprise_warning: float | None = None) -> None:
    """Win rate (ties as half) with its 95% CI band, the paper's metric (ties excluded), the ceiling, the base at
    0.5, the in-context oracle when it was evaluated, and phase changes; below it, where the rows carry ``surprise``,
    how much less likely the frozen base model finds the policy's answers than its own (nats per token), with the
    level at which the run warns (``surprise_warning``)."""
    gaps = [{"interaction": r["interaction"], "phase": r["phase"], "gap": gap}
            for r in rows if (gap := surprise_gap(r)) is not None]
    if gaps:
        fig, (ax, low) = plt.subplots(2, 1, figsize=(9, 6.4), sharex=True, height_ratios=(3, 1))
        _plot_surprise(low, gaps, phases, surprise_warning)
    else:
        fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, seg in enumerate(_by_phase(rows)):
        label = (lambda s: s) if i == 0 else (lambda s: None)
        xs, ys = _series(seg, "win_rate")
        _, lo = _series(seg, "ci_low")
        _, hi = _series(seg, "ci_high")
        ax.plot(xs, ys, "o-", color="C0", markersize=3, label=label("SDPO policy vs base (ties = 1/2)"))
        if len(lo) == len(xs):
            ax.fill_between(xs, lo, hi, color="C0", alpha=0.2, label=label("95% CI"))
        ax.plot(*_series(seg, "win_rate_excl_ties"), "s--", color="C2", markersize=3,
                label=label("excluding ties (paper)"))
        ax.plot(*_series(seg, "ceiling"), ":", color="C3", label=label("ceiling (perfect answer, ties = 1/2)"))
        ax.plot(*_series(seg, "oracle/win_rate"), "-", color="C1", alpha=0.7, label=label("in-context oracle"))
    ax.axhline(0.5, color="black", linewidth=0.8, label="base model")
    _phase_lines(ax, phases)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("" if gaps else "interactions")
    ax.set_ylabel("win rate vs frozen base")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_surprise(ax: Any, gaps: Sequence[dict[str, Any]], phases: Sequence[dict[str, Any]],
                   warning: float | None) -> None:
    for i, seg in enumerate(_by_phase(gaps)):
        ax.plot(*_series(seg, "gap"), "o-", color="C4", markersize=3,
                label="policy's answers less the base's own" if i == 0 else None)
    ax.axhline(0.0, color="black", linewidth=0.8)
    if warning is not None:
        ax.axhline(warning, color="C3", linestyle="--", linewidth=1, label="the run warns above this")
    for p in phases[1:]:
        ax.axvline(p["start"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("interactions")
    ax.set_ylabel("base model's surprise\n(nats per token)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def plot_preferences(rows: Sequence[dict[str, Any]], phases: Sequence[dict[str, Any]], path: Path,
                     title: str) -> None:
    """Share of held-out answers satisfying each preference (policy solid, with its 95% interval shaded where the
    rows carry one; base dashed), over interactions."""
    names = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("sat/") and k != "sat/all"})
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        for j, seg in enumerate(_by_phase(rows)):
            ax.plot(*_series(seg, f"sat/{name}"), "o-", color=color, markersize=3, label=name if j == 0 else None)
            (xs, lows), (high_xs, highs) = _series(seg, f"sat_low/{name}"), _series(seg, f"sat_high/{name}")
            if xs and xs == high_xs:  # the 95% interval, where logged
                ax.fill_between(xs, lows, highs, color=color, alpha=0.08, linewidth=0)
            ax.plot(*_series(seg, f"base_sat/{name}"), "--", color=color, alpha=0.5)
    for j, seg in enumerate(_by_phase(rows)):
        ax.plot(*_series(seg, "sat/all"), "k-", linewidth=1.5, alpha=0.6,
                label="all current preferences" if j == 0 else None)
    _phase_lines(ax, phases)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("interactions")
    ax.set_ylabel("share of held-out answers satisfying it")
    ax.set_title(f"{title}\n(solid: policy with its 95% interval, dashed: base model)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
