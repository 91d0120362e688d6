"""The update-cost benchmark, in miniature (its figures are printed, never asserted against a target)."""

from __future__ import annotations

import shutil

from transformers import AutoConfig

from sdpo_env import bench_step
from sdpo_env.tiny import resolve_model_path


def test_every_variant_is_timed_and_the_table_printed(capsys) -> None:
    bench_step.main(["--models", "tiny", "--rounds", "1", "--batch-size", "2", "--completion-tokens", "8"])
    out = capsys.readouterr().out
    assert "update / floor" in out and "update / 3-forward" in out and "peak resident memory" in out
    figures = bench_step.bench(resolve_model_path("tiny"), batch_size=2, completion_tokens=8, rounds=1, device="cpu")
    for name in ("sdpo_update_s", "floor_s", "three_forward_s", "generation_s", "teacher_forward_s"):
        assert figures[name] > 0
    assert figures["ratio_vs_floor"] == figures["sdpo_update_s"] / figures["floor_s"]


def test_random_model_of_a_real_shape_loads_through_auto_classes() -> None:
    folder = bench_step.random_model_folder("qwen2-cpu", resolve_model_path("tiny"))
    try:
        config = AutoConfig.from_pretrained(folder)
    finally:
        shutil.rmtree(folder)
    assert config.model_type == "qwen2" and config.hidden_size == bench_step.SHAPES["qwen2-cpu"]["hidden_size"]
