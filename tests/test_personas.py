"""Persona loading and validation: every shipped persona, and the errors users see."""

from __future__ import annotations

import copy

import pytest

from sdpo_env.errors import PersonaError, UnknownNameError
from sdpo_env.files import shipped_names
from sdpo_env.personas import Persona, load_persona
from tests.conftest import VALID_PERSONA

SHIPPED = shipped_names("users")
PAPER_NAMED = ["no_emojis", "less_filler_praise", "answer_directly_less_formatting"] + [
    f"{a}_{b}_{c}" for a in ("concise", "detailed") for b in ("casual", "professional") for c in ("beginner", "expert")
]


def test_the_paper_profiles_and_eight_more_styles_are_shipped() -> None:
    assert set(PAPER_NAMED) <= set(SHIPPED)
    assert len(set(SHIPPED) - set(PAPER_NAMED)) >= 8


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_persona_is_valid_and_checkable(name: str) -> None:
    persona = load_persona(name)
    assert persona.name == name
    assert persona.checkable, "every shipped persona must work with the offline rule simulator and judge"
    assert all(len(p.follow_ups) >= 5 for p in persona.preferences)
    assert persona.unrelated_pool


def test_path_works_where_a_name_does(write_yaml) -> None:
    path = write_yaml(VALID_PERSONA, "mine.yaml")
    persona = load_persona(str(path))
    assert isinstance(persona, Persona) and persona.source == str(path)
    assert persona.satisfaction("Short answer.") == {"concise": True, "no_emojis": True}
    assert persona.satisfaction("Short 😀") == {"concise": True, "no_emojis": False}


def test_unknown_persona_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown persona 'no_emoji'\. Did you mean 'no_emojis'"):
        load_persona("no_emoji")


def test_missing_file_is_named(tmp_path) -> None:
    expected = r"persona file '.*nope\.yaml' does not exist\. Give an existing \.yaml path or a shipped persona: "
    with pytest.raises(UnknownNameError, match=expected):
        load_persona(str(tmp_path / "nope.yaml"))


def test_every_problem_is_reported_with_file_and_key(write_yaml) -> None:
    data = copy.deepcopy(VALID_PERSONA)
    data["unrelated_rate"] = 1.5
    data["preferences"][0]["rule"] = {"metric": "word_cont", "max": 50}
    data["preferences"][1]["follow_up"] = ["typo key"]
    data["satisfied"]["replies"] = "thanks"
    path = write_yaml(data)
    with pytest.raises(PersonaError) as caught:
        load_persona(str(path))
    text = str(caught.value)
    assert text.startswith("4 problem(s) in a persona file:")
    assert f"{path}: unrelated_rate: got 1.5; must be <= 1.0" in text
    assert f"{path}: preferences[0].rule[0].metric: unknown metric 'word_cont'. Did you mean 'word_count'" in text
    assert f"{path}: preferences[1].follow_up: unknown key. Did you mean 'follow_ups'?" in text
    assert f"{path}: satisfied.replies: expected a list of a string, got 'thanks' (str)" in text


def test_duplicate_preference_and_empty_rule(write_yaml) -> None:
    data = copy.deepcopy(VALID_PERSONA)
    data["preferences"][1]["name"] = "concise"
    data["preferences"][1]["rule"] = {"metric": "emoji_count"}
    with pytest.raises(PersonaError) as caught:
        load_persona(str(write_yaml(data)))
    assert "preferences[1].name: duplicate preference name 'concise' (also preferences[0])" in str(caught.value)
    assert "preferences[1].rule[0]: a rule needs min, max or both" in str(caught.value)


def test_duplicate_yaml_key_is_an_error(write_yaml) -> None:
    path = write_yaml("name: a\nname: b\nprofile: x\n")
    with pytest.raises(PersonaError, match=r"line 2, column 1: invalid YAML: duplicate key 'name'"):
        load_persona(str(path))


def test_plus_accumulates_preferences() -> None:
    combined = load_persona("no_emojis").plus(load_persona("less_filler_praise"))
    assert [p.name for p in combined.preferences] == ["no_emojis", "no_opening_praise", "no_closing_filler"]
    assert combined.name == "no_emojis+less_filler_praise"
