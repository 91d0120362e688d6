"""The token-advantage inspection command on the shipped tiny model: terminal, HTML, PNG and the control."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdpo_env.heatmap import advantages, main, token_pieces
from sdpo_env.hindsight import DEFAULT_TEMPLATE
from sdpo_env.policy import ChatPolicy

X = [{"role": "user", "content": "How do I water basil?"}]
Y = "Hey! 🌿 Just water it when the soil feels dry! 😊"


@pytest.fixture(scope="module")
def policy():
    return ChatPolicy.load("tiny", device="cpu")


def test_token_pieces_rebuild_the_text_with_emojis_whole(policy) -> None:
    ids = policy.encode_completion(Y)
    pieces = token_pieces(policy, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == Y + policy.tokenizer.decode([ids[-1]])
    assert any("🌿" in p for p in pieces) and not any("\ufffd" in p for p in pieces)


def test_advantages_are_the_hindsight_log_ratio(policy) -> None:
    (scores,) = advantages(policy, [(X, Y, "Please stop using emojis.")], DEFAULT_TEMPLATE)
    assert len(scores.tokens) == len(scores.advantages) == len(policy.encode_completion(Y))
    (same,) = advantages(policy, [(X, Y, "Please stop using emojis.")], DEFAULT_TEMPLATE, batch_size=1)
    np.testing.assert_allclose(scores.advantages, same.advantages, atol=1e-5)
    assert scores.advantages.sum() < 0  # the complaint makes this emoji-laden answer less likely


def test_the_command_writes_html_png_and_the_control(tmp_path, capsys) -> None:
    out = tmp_path / "inspect"
    code = main([f"prompt={X[0]['content']}", f"response={Y}", "follow_up=Please stop using emojis.",
                 "unrelated=What's the capital of Australia again?", f"out={out}"])
    assert code == 0
    figures = json.loads((out / "control.json").read_text())["example"]
    assert figures["relevant"] > 0 and figures["unrelated"] > 0
    assert figures["ratio"] == pytest.approx(figures["relevant"] / figures["unrelated"])
    page = (out / "heatmap.html").read_text(encoding="utf-8")
    assert "follow-up: Please stop using emojis." in page and "capital of Australia" in page
    assert "🌿" in page and "ratio of mean |A<sub>t</sub>|" in page
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "relevant follow-up" in printed and "unrelated follow-up" in printed and "mean |A_t|" in printed


def test_summary_over_a_logged_file_and_a_run_folder(tmp_path, write_jsonl) -> None:
    out = tmp_path / "sample"
    assert main(["data=sample", "index=1", "summary=6", f"out={out}"]) == 0
    figures = json.loads((out / "control.json").read_text())
    assert figures["all"]["n"] == 6 and figures["all"]["relevant"] > 0
    assert set(figures) >= {"example", "all"}
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"interaction": i, "messages": X, "response": Y, "follow_up": o, "relevant": r}
            for i, (o, r) in enumerate([("brb, making tea", False), ("no emojis pls", True)])]
    (run / "interactions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main([f"run={run}", f"out={tmp_path / 'r'}"]) == 0  # index 0 = the first relevant interaction
    assert "no emojis pls" in (tmp_path / "r" / "heatmap.html").read_text(encoding="utf-8")


def test_bad_arguments_are_explained(tmp_path, capsys) -> None:
    assert main(["prompt=hi", "data=sample", "templte=paper"]) == 2
    err = capsys.readouterr().err
    assert "templte: unknown key. Did you mean 'template'?" in err
    assert main(["prompt=hi", "response=yo"]) == 2
    assert "command line: follow_up: needed with prompt=, response=" in capsys.readouterr().err
    assert main(["data=sample", "index=100000", f"out={tmp_path}"]) == 2
    assert "index: got 100000; the source has" in capsys.readouterr().err
