"""The benchmark's numbers, as pure functions of run folders' ``metrics.jsonl`` rows (no models, no I/O).

Per run (:func:`run_metrics`), from the evaluation rows (``interaction``, ``phase``, ``win_rate``, ...):

- ``end/p<k>/win_rate`` and ``end/p<k>/win_rate_excl_ties``: at the last evaluation of phase k (for a phase change,
  the row judged under phase k's preferences); ``final/...``: the run's last evaluation;
- ``end/p<k>/sat_min``: there, the satisfaction ``sat/<name>`` of the least satisfied preference in force (what the
  user gets on the weakest point; ``None`` without rule-checked preferences);
- ``auc``: area under the win-rate curve divided by the interactions it spans (the mean win rate over the run;
  each phase is integrated on its own, so the drop at a flip is not smeared across it);
- ``reach/p<k>``: interactions from the start of phase k to its first evaluation with ``win_rate >= threshold``
  (phase 0: how fast the learner gets there; later phases: post-change recovery); ``None`` = never;
- ``retention``: for preferences that stay in force after their phase ends (complementary scenarios), the mean
  change of their satisfaction ``sat/<name>`` from the end of the phase that introduced them to the end of the run
  (0 = fully kept, negative = forgotten); ``None`` when no preference carries over (a flip);
- ``surprise_max``: the largest gap, over the run's evaluations, between the frozen base model's surprise at the
  policy's answers and at its own (``surprise - base_surprise``, nats per token: text the base would not write);
  ``None`` for runs made before the evaluations measured it;
- ``interaction_s`` (learner + environment per interaction) and ``total_s`` (with evaluations), from the summary.

Across seeds (:func:`aggregate_runs`): mean and a 95% Student-t half-width per number; ``reach`` numbers are
averaged over the seeds that reached the threshold and report how many did.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Two-sided 95% Student-t quantiles by degrees of freedom (no scipy dependency); past 30 the normal's 1.96.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}


@dataclass(frozen=True)
class PhaseInfo:
    """What the benchmark needs to know about a scenario phase.

    Attributes:
        index: Phase number (0 first).
        start: First interaction of the phase.
        end: End of the phase (exclusive), clipped to the run's length.
        label: Persona name, or ``+name`` for an added persona.
        preferences: Names of the preferences in force during the phase.
        introduced: Names of the preferences this phase introduced (all of them for phase 0 and a flip).
    """

    index: int
    start: int
    end: int
    label: str
    preferences: tuple[str, ...]
    introduced: tuple[str, ...]


def phase_infos(scenario: Any, n: int) -> list[PhaseInfo]:
    """:class:`PhaseInfo` for each phase of a loaded scenario that starts before interaction ``n``."""
    out: list[PhaseInfo] = []
    previous: set[str] = set()
    for p in scenario.phases:
        if p.start >= n:
            break
        names = tuple(pref.name for pref in p.persona.preferences)
        introduced = tuple(x for x in names if x not in previous) if p.added is not None else names
        label = p.persona.name if p.added is None else f"+{p.added}"
        out.append(PhaseInfo(p.index, p.start, scenario.end_of(p, n), label, names, introduced))
        previous = set(names)
    return out


def final_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The run's last evaluation under the preferences it last learned from: the first row at the last interaction
    (a run that ends at a persona change also judges the new preferences there, in the row after it)."""
    return next(r for r in rows if r["interaction"] == rows[-1]["interaction"])


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


def surprise_gap(row: Mapping[str, Any]) -> float | None:
    """``surprise - base_surprise`` of an evaluation row: how much less likely (nats per token) the frozen base model
    finds the policy's answers than its own; ``None`` where the row has no such figures (a run made before them, or
    with ``eval.surprise=false``) or they are not finite."""
    surprise, base = _number(row.get("surprise")), _number(row.get("base_surprise"))
    return None if surprise is None or base is None else surprise - base


def area_under_curve(rows: Sequence[Mapping[str, Any]], key: str = "win_rate") -> float | None:
    """Trapezoid area of ``key`` over interactions, per phase, divided by the interactions covered."""
    area, span = 0.0, 0.0
    for phase in sorted({r["phase"] for r in rows}):
        points = sorted((r["interaction"], y) for r in rows
                        if r["phase"] == phase and (y := _number(r.get(key))) is not None)
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            area += (x1 - x0) * (y0 + y1) / 2
            span += x1 - x0
    return area / span if span else None


def run_metrics(rows: Sequence[Mapping[str, Any]], phases: Sequence[PhaseInfo], *, threshold: float,
                summary: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """The benchmark's numbers for one run (see the module docstring for each key).

    Args:
        rows: The run's ``metrics.jsonl`` rows, in order.
        phases: The scenario's phases (:func:`phase_infos`).
        threshold: Win rate that counts as "reached" (0.8 by default in the bench).
        summary: The run's ``summary.json`` (for timings), if any.
    """
    out: dict[str, float | None] = {}
    for p in phases:
        at_end = [r for r in rows if r["phase"] == p.index and r["interaction"] == p.end]
        for key in ("win_rate", "win_rate_excl_ties"):
            out[f"end/p{p.index}/{key}"] = _number(at_end[-1].get(key)) if at_end else None
        found = [_number(at_end[-1].get(f"sat/{name}")) for name in p.preferences] if at_end else []
        shares = [v for v in found if v is not None]
        out[f"end/p{p.index}/sat_min"] = min(shares) if shares else None
        reached = [r["interaction"] for r in rows if r["phase"] == p.index
                   and (_number(r.get("win_rate")) or 0.0) >= threshold]
        out[f"reach/p{p.index}"] = float(min(reached) - p.start) if reached else None
    for key in ("win_rate", "win_rate_excl_ties"):
        out[f"final/{key}"] = _number(final_row(rows).get(key)) if rows else None
    out["auc"] = area_under_curve(rows)
    out["retention"] = retention(rows, phases)
    gaps = [gap for r in rows if (gap := surprise_gap(r)) is not None]
    out["surprise_max"] = max(gaps) if gaps else None
    timings = (summary or {}).get("timings", {})
    out["interaction_s"] = _number(timings.get("interaction_s_mean"))
    out["total_s"] = _number(timings.get("total_s"))
    return out


def retention(rows: Sequence[Mapping[str, Any]], phases: Sequence[PhaseInfo]) -> float | None:
    """Mean change of ``sat/<name>`` from the end of the phase that introduced a preference to the end of the run,
    over preferences still in force at the end that were introduced before the last phase; ``None`` if none are."""
    if len(phases) < 2 or not rows:
        return None
    final_prefs = set(phases[-1].preferences)
    changes = []
    for p in phases[:-1]:
        at_end = [r for r in rows if r["phase"] == p.index and r["interaction"] == p.end]
        if not at_end:
            continue
        for name in p.introduced:
            before, after = _number(at_end[-1].get(f"sat/{name}")), _number(final_row(rows).get(f"sat/{name}"))
            if name in final_prefs and before is not None and after is not None:
                changes.append(after - before)
    return sum(changes) / len(changes) if changes else None


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and 95% Student-t half-width (``None`` for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    df = n - 1
    t = T_975.get(df) or (T_975[max(k for k in T_975 if k <= df)] if df <= 30 else 1.96)
    return mean, t * math.sqrt(variance / n)


@dataclass
class Stat:
    """One number aggregated over seeds.

    Attributes:
        mean: Mean over the seeds that have a value (``None`` if none has).
        ci: 95% half-width over those seeds (``None`` with fewer than two).
        n: Seeds with a value.
        of: Seeds aggregated.
    """

    mean: float | None
    ci: float | None
    n: int
    of: int


def aggregate_runs(per_seed: Sequence[Mapping[str, float | None]]) -> dict[str, Stat]:
    """Aggregates :func:`run_metrics` outputs of one learner over seeds, key by key."""
    keys = sorted({k for m in per_seed for k in m})
    out = {}
    for key in keys:
        values = [v for m in per_seed if (v := m.get(key)) is not None]
        mean, ci = mean_ci(values) if values else (None, None)
        out[key] = Stat(mean, ci, len(values), len(per_seed))
    return out


def mean_curve(runs: Sequence[Sequence[Mapping[str, Any]]], key: str = "win_rate"
               ) -> list[tuple[int, int, float, float | None]]:
    """Mean over seeds of ``key`` at each (phase, interaction) evaluation point: ``(phase, interaction, mean, ci)``."""
    points: dict[tuple[int, int], list[float]] = {}
    for rows in runs:
        for r in rows:
            value = _number(r.get(key))
            if value is not None:
                points.setdefault((r["phase"], r["interaction"]), []).append(value)
    return [(phase, x, *mean_ci(values)) for (phase, x), values in sorted(points.items())]
