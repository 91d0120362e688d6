"""Scenario loading: shipped files, phases (flip, add), and the errors users see."""

from __future__ import annotations

import pytest

from sdpo_env.errors import ScenarioError, UnknownNameError
from sdpo_env.files import shipped_dir, shipped_names
from sdpo_env.scenarios import load_scenario

SHIPPED = shipped_names("scenarios")


def test_required_scenarios_are_shipped() -> None:
    assert {"single", "flip", "complementary", "noisy"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_is_valid_and_documented(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name
    first_lines = (shipped_dir("scenarios") / f"{name}.yaml").read_text().splitlines()[:3]
    assert any(f"python -m sdpo_env.run scenario={name}" in line for line in first_lines)


def test_flip_switches_exactly_at_250() -> None:
    flip = load_scenario("flip")
    assert flip.n_interactions == 500
    assert flip.persona_at(249).name == "concise_casual_beginner"
    assert flip.persona_at(250).name == "detailed_professional_expert"
    assert [p.name for p in flip.persona_at(250).preferences] == ["detailed", "professional", "expert"]


def test_complementary_accumulates() -> None:
    comp = load_scenario("complementary")
    names = [[p.name for p in comp.persona_at(t).preferences] for t in (0, 149, 150, 299, 300, 449)]
    assert names[0] == names[1] == ["no_emojis"]
    assert names[2] == names[3] == ["no_emojis", "no_opening_praise", "no_closing_filler"]
    assert names[4] == names[5] == ["no_emojis", "no_opening_praise", "no_closing_filler", "answer_first", "plain_text"]


def test_noisy_user_is_unrelated_half_the_time() -> None:
    assert load_scenario("noisy").persona_at(0).unrelated_rate == 0.5


def _scenario(**overrides):
    data = {"name": "mine", "phases": [{"start": 0, "end": 10, "persona": "no_emojis"},
                                       {"start": 10, "end": 20, "persona": "likes_emojis"}]}
    data.update(overrides)
    return data


def test_user_file_with_relative_persona_path(write_yaml, tmp_path) -> None:
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "me.yaml").write_text((shipped_dir("users") / "no_emojis.yaml").read_text())
    path = write_yaml(_scenario(phases=[{"start": 0, "end": 5, "persona": "users/me.yaml"}]), "s.yaml")
    assert load_scenario(str(path)).persona_at(3).name == "no_emojis"


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ([{"start": 0, "end": 10, "persona": "no_emojis"}, {"start": 12, "end": 20, "persona": "likes_emojis"}],
         "phases[1].start: got 12; gap after phases[0] which ends at 10"),
        ([{"start": 0, "end": 10, "persona": "no_emojis"}, {"start": 8, "end": 20, "persona": "likes_emojis"}],
         "phases[1].start: got 8; overlaps phases[0] which ends at 10 (start it at 10)"),
        ([{"start": 5, "end": 10, "persona": "no_emojis"}], "phases[0].start: got 5; the first phase must start at 0"),
        ([{"start": 0, "end": 10, "add": "no_emojis"}], "phases[0]: the first phase must set a 'persona'"),
        ([{"start": 0, "end": 10, "persona": "no_emojis", "add": "likes_emojis"}],
         "phases[0]: a phase needs exactly one of 'persona' (set the user) or 'add' (add preferences)"),
        ([{"start": 0, "end": 0, "persona": "no_emojis"}], "phases[0].end: got 0; must be >= 1"),
        ([{"start": 0, "end": 10, "persona": "no_emoji"}],
         "phases[0].persona: unknown persona 'no_emoji'. Did you mean 'no_emojis'"),
        ([{"begin": 0, "end": 10, "persona": "no_emojis"}], "phases[0].begin: unknown key."),
    ],
)
def test_bad_phases_are_named(write_yaml, phases, expected) -> None:
    path = write_yaml(_scenario(phases=phases))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(str(path))
    assert f"{path}: {expected}" in str(caught.value)


def test_bad_prompt_pool(write_yaml) -> None:
    path = write_yaml(_scenario(prompts={"train": "nowhere.jsonl"}))
    with pytest.raises(ScenarioError, match=r"prompts\.train: got 'nowhere\.jsonl': neither a built-in pool"):
        load_scenario(str(path))


def test_unknown_scenario_name() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown scenario 'flp'\. Did you mean 'flip'"):
        load_scenario("flp")


def test_persona_override_needs_one_phase() -> None:
    assert load_scenario("single").with_persona("no_emojis").persona_at(0).name == "no_emojis"
    with pytest.raises(ScenarioError, match=r"persona= replaces the persona of a one-phase scenario"):
        load_scenario("flip").with_persona("no_emojis")
