"""The run's plots: what each draws (the drawing calls are recorded, the files written for real)."""

from __future__ import annotations

from matplotlib.axes import Axes

from sdpo_env.plots import plot_preferences

ROWS = [
    {"interaction": 0, "phase": 0, "sat/concise": 0.5, "sat_low/concise": 0.3, "sat_high/concise": 0.7,
     "base_sat/concise": 0.5, "sat/all": 0.5},
    {"interaction": 4, "phase": 0, "sat/concise": 0.9, "sat_low/concise": 0.6, "sat_high/concise": 0.98,
     "base_sat/concise": 0.5, "sat/all": 0.9},
    {"interaction": 4, "phase": 1, "sat/detailed": 0.1, "sat_low/detailed": 0.02, "sat_high/detailed": 0.4,
     "base_sat/detailed": 0.4, "sat/all": 0.1},
]
PHASES = [{"start": 0, "label": "a"}, {"start": 4, "label": "b"}]


def test_each_preference_has_its_interval_shaded_per_phase(tmp_path, monkeypatch) -> None:
    bands = []
    fill_between = Axes.fill_between

    def record(self, x, low, high, **kwargs):
        bands.append((list(x), list(low), list(high)))
        return fill_between(self, x, low, high, **kwargs)

    monkeypatch.setattr(Axes, "fill_between", record)
    plot_preferences(ROWS, PHASES, tmp_path / "prefs.png", "t")
    assert sorted(bands) == sorted([([0, 4], [0.3, 0.6], [0.7, 0.98]), ([4], [0.02], [0.4])])
    assert (tmp_path / "prefs.png").stat().st_size > 10_000

    bands.clear()  # rows written before the intervals existed: no band, the plot still draws
    plot_preferences([{k: v for k, v in r.items() if "_low/" not in k and "_high/" not in k} for r in ROWS], PHASES,
                     tmp_path / "old.png", "t")
    assert bands == [] and (tmp_path / "old.png").is_file()
