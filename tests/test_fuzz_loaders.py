"""Malformed persona and scenario files: each raises the project's own error naming the file and the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdpo_env.errors import ValidationError
from sdpo_env.personas import load_persona
from sdpo_env.scenarios import load_scenario
from tests.conftest import VALID_PERSONA

VALID_SCENARIO: dict[str, Any] = {
    "name": "fuzz",
    "phases": [{"start": 0, "end": 10, "persona": "no_emojis"}, {"start": 10, "end": 20, "add": "less_filler_praise"}],
    "prompts": {"train": "train", "eval": "eval"},
    "turns_per_conversation": 1,
    "defaults": {"seed": 1},
}

BAD_YAML = [
    "name: [unclosed", "name: {a: 1", "key: value\n  bad indent: x\n", "- a\n- b\nc: d", "name: 'open quote",
    "\t- tab", "a: b: c", "name: x\nname: y", "? [a, b]\n: c", "*undefined_alias", "!!python/object:os.system x",
    "name: @at", "%YAML 9.9\n---\nx: 1", "{", "]", "name: x\n...\nmore: y\n---\nz: 1",
]
NOT_A_MAPPING = ["", "   \n", "# only a comment\n", "- a list\n- of items", "just a string", "42", "null", "[1, 2]"]


def _junk(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [bytes(rng.integers(0, 256, size=int(rng.integers(1, 400)), dtype=np.uint8)) for _ in range(n)]


def _wrong_values(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return ["yes please", 3, [], {}]
    if isinstance(value, (int, float)):
        return ["often", [1], {"a": 1}, True, None]
    if isinstance(value, str):
        return [12, [], {"a": 1}, None, True]
    if isinstance(value, list):
        return ["not a list", 5, {"a": 1}, None]
    return ["not a mapping", 5, [1, 2], None]


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


def _set(data: Any, path: tuple, value: Any) -> Any:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _delete(data: Any, path: tuple) -> Any:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


OPTIONAL = {("unrelated_follow_ups",), ("description",), ("prompts",), ("turns_per_conversation",), ("defaults",),
            ("satisfied",), ("unrelated_rate",)}


def _structural_cases(valid: dict, free_mappings: set[str]) -> list[Any]:
    cases: list[Any] = []
    for path in _paths(valid):
        if path[-1] in free_mappings or any(p in free_mappings for p in path[:-1]):
            continue  # free-form mappings (scenario defaults) are validated by the run config
        value = _get(valid, path)
        cases += [_set(valid, path, wrong) for wrong in _wrong_values(value)
                  if not (wrong is None and path in OPTIONAL)]
        if isinstance(value, dict):
            cases.append(_set(valid, path, {**value, "unknwon_key": 1}))
        optional_leaf = ("min", "max", "add", "persona", "rule", "new_question_rate", "train", "eval")
        if isinstance(path[-1], str) and not (path in OPTIONAL or path[-1] in optional_leaf):
            cases.append(_delete(valid, path))
    cases.append({**valid, "extra_top_level": True})
    return cases


def _get(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


def persona_cases() -> list[Any]:
    cases = _structural_cases(VALID_PERSONA, set())
    for bad in (-0.1, 1.5, float("nan"), float("inf")):
        cases.append({**VALID_PERSONA, "unrelated_rate": bad})
        cases.append(_set(VALID_PERSONA, ("satisfied", "new_question_rate"), bad))
    cases.append(_set(VALID_PERSONA, ("preferences", 0, "rule"), {"metric": "word_count", "min": 9, "max": 1}))
    cases.append(_set(VALID_PERSONA, ("preferences", 0, "rule"), {"metric": "wordcount", "max": 1}))
    cases.append(_set(VALID_PERSONA, ("preferences", 0, "rule"), {"metric": "word_count"}))
    cases.append(_set(VALID_PERSONA, ("preferences",), []))
    cases.append(_set(VALID_PERSONA, ("preferences", 0, "follow_ups"), []))
    cases.append(_set(VALID_PERSONA, ("preferences", 0, "follow_ups"), ["  "]))
    cases.append(_set(VALID_PERSONA, ("preferences", 1, "name"), "concise"))
    cases.append(_set(VALID_PERSONA, ("preferences", 1, "name"), "has space"))
    cases.append(_set(VALID_PERSONA, ("name",), ""))
    return cases


def scenario_cases() -> list[Any]:
    cases = _structural_cases(VALID_SCENARIO, {"defaults"})
    phases = VALID_SCENARIO["phases"]
    for start, end in ((1, 10), (0, 0), (5, 3), (-1, 10)):
        cases.append(_set(VALID_SCENARIO, ("phases", 0), {"start": start, "end": end, "persona": "no_emojis"}))
    cases.append(_set(VALID_SCENARIO, ("phases", 1, "start"), 9))  # overlap
    cases.append(_set(VALID_SCENARIO, ("phases", 1, "start"), 12))  # gap
    cases.append(_set(VALID_SCENARIO, ("phases",), [phases[1], phases[0]]))  # out of order
    cases.append(_set(VALID_SCENARIO, ("phases",), []))
    for name in ("no_emoji", "nobody", "users/nothing.yaml", "../x.yaml"):
        cases.append(_set(VALID_SCENARIO, ("phases", 0, "persona"), name))
        cases.append(_set(VALID_SCENARIO, ("phases", 1, "add"), name))
    cases.append(_set(VALID_SCENARIO, ("phases", 1), {"start": 10, "end": 20}))
    cases.append(_set(VALID_SCENARIO, ("phases", 1), {"start": 10, "end": 20, "add": "a", "persona": "b"}))
    cases.append(_set(VALID_SCENARIO, ("prompts", "train"), "missing.jsonl"))
    cases.append(_set(VALID_SCENARIO, ("turns_per_conversation",), 0))
    return cases


def _raw_cases() -> list[str | bytes]:
    return BAD_YAML + NOT_A_MAPPING + _junk(30)  # type: ignore[operator]


def _write(tmp_path: Path, i: int, case: Any) -> Path:
    path = tmp_path / f"case_{i}.yaml"
    if isinstance(case, bytes):
        path.write_bytes(case)
    elif isinstance(case, str):
        path.write_text(case, encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(case, allow_unicode=True), encoding="utf-8")
    return path


def _assert_named(exc: ValidationError, path: Path) -> None:
    assert exc.problems, "an error with no problems listed"
    for problem in exc.problems:
        assert problem.source == str(path), f"problem not attributed to the file: {problem}"
        assert problem.key, f"problem without a key: {problem}"
        assert str(path) in str(exc)


@pytest.mark.parametrize(("loader", "make_cases"), [(load_persona, persona_cases), (load_scenario, scenario_cases)])
def test_malformed_files_raise_our_error_naming_file_and_key(tmp_path, loader, make_cases) -> None:
    cases = _raw_cases() + make_cases()
    assert len(cases) >= 100
    for i, case in enumerate(cases):
        path = _write(tmp_path, i, case)
        with pytest.raises(ValidationError) as caught:
            loader(str(path))
        _assert_named(caught.value, path)


def test_at_least_200_cases() -> None:
    assert len(_raw_cases()) * 2 + len(persona_cases()) + len(scenario_cases()) >= 200


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.sampled_from(["name", "profile", "preferences", "phases", "satisfied", "defaults",
                                             "unrelated_rate", "prompts", "x"]), yaml_values, max_size=6))
def test_random_documents_never_escape_with_another_exception(tmp_path, data) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    for loader in (load_persona, load_scenario):
        try:
            loader(str(path))
        except ValidationError as exc:
            _assert_named(exc, path)
