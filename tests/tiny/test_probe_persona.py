"""``probe --persona``: whether the model follows each follow-up of a persona, read against its answers without
hindsight."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdpo_env.personas import load_persona
from sdpo_env.tiny import probe as probe_module
from sdpo_env.tiny.probe import check_phrasings, main, phrasings_table

PERSONA = """\
name: terse
profile: Wants short answers.
preferences:
  - name: concise
    description: short
    rule: {metric: word_count, max: 50}
    follow_ups: ["Shorter please.", "too long", "tl;dr?"]
  - name: warm
    description: judged by an LLM only
    follow_ups: ["Be nicer."]
unrelated_follow_ups: ["What about tomatoes?"]
"""


SCORED: list[str] = []  # the last message of every conversation the stub scored


class Stub:
    """Stands in for the sampler: short answers to "Shorter please.", long ones to "tl;dr?" and without
    hindsight, and short ones to "too long" in every other answer."""

    def __init__(self, *args, **kwargs):
        self.calls = 0
        self.sampled = lambda k: None

    def generate(self, conversations):
        out = []
        for c in conversations:
            last = c[-1]["content"]
            self.calls += 1
            short = "Shorter please." in last or ("too long" in last and self.calls % 2 == 0)
            out.append(("Short and to the point." if short else "word " * 80, True))
        self.sampled(len(conversations))
        return out

    def token_logprobs(self, conversations, answers):
        """Only "Shorter please." makes an answer less likely: by 0.1 per token (under the gate), one token by 1.1."""
        out = []
        for c, answer in zip(conversations, answers):
            SCORED.append(c[-1]["content"])
            logp = np.full(len(answer.split()) + 1, -1.0)
            if "Shorter please." in c[-1]["content"]:
                logp -= 0.1
                logp[0] -= 1.0
            out.append(logp)
        return out


@pytest.fixture
def terse(tmp_path):
    path = tmp_path / "terse.yaml"
    path.write_text(PERSONA)
    return load_persona(path)


def test_each_follow_up_is_read_against_the_answers_without_hindsight(terse, monkeypatch) -> None:
    monkeypatch.setattr(probe_module, "Sampler", Stub)
    SCORED.clear()
    [figures] = check_phrasings([terse], n=64, per_phrasing=32)
    found = figures["preferences"]["concise"]
    assert found["none"] == 0.0
    assert found["phrasings"] == {"Shorter please.": 1.0, "too long": 0.5, "tl;dr?": 0.0}
    # what an update would learn, on the answers without hindsight that break the preference (all 64, 32 scored)
    assert found["n_broken"] == 32
    assert found["signal"]["Shorter please."] == {"abs": pytest.approx((81 * 0.1 + 1.0) / 81), "negative": 1.0,
                                                  "moves": 1.0}
    assert found["signal"]["too long"] == found["unrelated"] == {"abs": 0.0, "negative": 0.0, "moves": 0.0}
    # the control is the persona's own unrelated follow-up, in the hindsight block
    assert sum("What about tomatoes?" in text for text in SCORED) == 32
    assert figures["unchecked"] == ["warm"]  # no rule: an LLM judge's preference, not measured
    assert found["others"] == {}  # no other preference with a rule to read its answers on
    lines = phrasings_table(figures).splitlines()
    assert lines[0].startswith("persona terse (") and "64 answers without hindsight, 32 per follow-up" in lines[0]
    rows = [line.split() for line in lines[4:7]]
    assert [row[:2] for row in rows] == [["0.00", "ignored"], ["0.50", "partly"], ["1.00", "followed"]]
    assert rows[2][2:5] == [f"{(81 * 0.1 + 1.0) / 81:.3f}", "1.00", "1.00"]
    assert rows[0][2:5] == ["0.000", "0.00", "0.00"]
    assert lines[7] == "  warm: no rule (judged by an LLM only), not measured"
    assert lines[-1].startswith("follow-ups: 3; 1 followed, 1 partly, 0 unclear, 1 ignored, 0 reversed")


CALM = """\
  - name: calm
    description: no exclamation marks
    rule: {metric: exclamation_count, max: 0}
    follow_ups: ["No exclamation marks."]
"""


class Loud(Stub):
    """A short, loud answer to "Shorter please."; a long, calm one to anything else."""

    def generate(self, conversations):
        out = [("Short and to the point!" if "Shorter please." in c[-1]["content"] else "word " * 80, True)
               for c in conversations]
        self.sampled(len(conversations))
        return out


def test_each_preferences_follow_ups_are_read_on_the_other_preferences_too(tmp_path, monkeypatch) -> None:
    path = tmp_path / "terse_calm.yaml"
    path.write_text(PERSONA.replace("unrelated_follow_ups", CALM + "unrelated_follow_ups"))
    persona = load_persona(path)
    monkeypatch.setattr(probe_module, "Sampler", Loud)
    [figures] = check_phrasings([persona], n=16, per_phrasing=4)
    found = figures["preferences"]
    assert (found["concise"]["none"], found["calm"]["none"]) == (0.0, 1.0)  # without hindsight: long and calm
    # a third of concise's follow-up answers ("Shorter please.") come out loud; calm's come out long
    assert found["concise"]["others"] == {"calm": pytest.approx(8 / 12)}
    assert found["calm"]["others"] == {"concise": 0.0}
    lines = phrasings_table(figures).splitlines()
    assert "    its follow-ups' answers on the other preferences (without hindsight): calm 0.67 (1.00)" in lines
    assert "    its follow-ups' answers on the other preferences (without hindsight): concise 0.00 (0.00)" in lines


@pytest.mark.slow
def test_the_command_checks_a_shipped_persona_on_the_shipped_model(capsys) -> None:
    result = main(["--persona", "fewer_lists", "--n", "32", "--per-phrasing", "4", "--seed", "3"])
    [figures] = result["personas"]
    shares = figures["preferences"]["prose"]["phrasings"]
    assert len(shares) == 12 and all(share in (0, 0.25, 0.5, 0.75, 1) for share in shares.values())
    assert 0.2 <= figures["preferences"]["prose"]["none"] <= 0.8  # room to personalise, as the probe's table says
    assert sum(shares.values()) / len(shares) > 0.6  # most follow-ups are followed
    out = capsys.readouterr().out
    assert "persona fewer_lists" in out and "follow-ups: 12;" in out


def test_an_unknown_persona_is_refused_before_any_work(monkeypatch, capsys) -> None:
    monkeypatch.setattr(probe_module, "Sampler", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--persona", "no_such_persona"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--persona no_such_persona:" in err and "fewer_lists" in err  # lists the shipped names


def test_the_signal_is_read_at_agent_sdpos_default_gate() -> None:
    from agents.sdpo import SDPOConfig

    assert probe_module.SIGNAL_GATE == SDPOConfig().signal_gate


def test_the_figures_and_options_are_written_to_json(terse, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(probe_module, "Sampler", Stub)
    out = tmp_path / "checks" / "terse.json"  # its folder is made
    result = main(["--persona", terse.source, "--n", "8", "--per-phrasing", "2", "--json", str(out)])
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["options"]["persona"] == [terse.source] and written["options"]["per_phrasing"] == 2
    assert written["personas"] == json.loads(json.dumps(result["personas"]))
    assert written["personas"][0]["preferences"]["concise"]["phrasings"]["Shorter please."] == 1.0
    assert f"figures written to {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a folder is refused before any work
        main(["--persona", terse.source, "--json", str(tmp_path)])
    assert "--json" in capsys.readouterr().err
