"""The run's plots: what each draws (the drawing calls are recorded, the files written for real)."""

from __future__ import annotations

from matplotlib.axes import Axes

from sdpo_env.plots import plot_preferences, plot_win_rate

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


def test_the_win_rate_plot_draws_the_base_models_surprise_below_it_where_the_rows_carry_it(tmp_path,
                                                                                          monkeypatch) -> None:
    lines, levels = [], []
    plot, axhline = Axes.plot, Axes.axhline

    def record_plot(self, *args, **kwargs):
        if kwargs.get("label") == "policy's answers less the base's own" or kwargs.get("color") == "C4":
            lines.append((list(args[0]), [round(v, 6) for v in args[1]]))
        return plot(self, *args, **kwargs)

    def record_level(self, y=0, **kwargs):
        levels.append(y)
        return axhline(self, y, **kwargs)

    monkeypatch.setattr(Axes, "plot", record_plot)
    monkeypatch.setattr(Axes, "axhline", record_level)
    rows = [{"interaction": 0, "phase": 0, "win_rate": 0.5, "surprise": 0.40, "base_surprise": 0.45},
            {"interaction": 4, "phase": 0, "win_rate": 0.7, "surprise": 1.25, "base_surprise": 0.45},
            {"interaction": 4, "phase": 1, "win_rate": 0.2, "surprise": 1.25, "base_surprise": 0.45}]
    plot_win_rate(rows, PHASES, tmp_path / "wr.png", "t", surprise_warning=0.6)
    assert lines == [([0, 4], [-0.05, 0.8]), ([4], [0.8])]  # one segment per phase, the gap to the base's own
    assert 0.6 in levels and (tmp_path / "wr.png").stat().st_size > 10_000

    lines.clear()  # rows written before surprise existed: the win rate alone
    levels.clear()
    plot_win_rate([{k: v for k, v in r.items() if "surprise" not in k} for r in rows], PHASES, tmp_path / "old.png",
                  "t", surprise_warning=0.6)
    assert lines == [] and levels == [0.5] and (tmp_path / "old.png").is_file()  # the base model's win rate only
