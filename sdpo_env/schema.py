"""Typed validation of plain data (parsed YAML, command-line overrides) into dataclasses.

One pass over the data collects every problem (unknown keys with did-you-mean hints, wrong types, out-of-range
values, bad choices) instead of stopping at the first, and each problem names its source and dotted key. Personas,
scenarios and run configs all go through :func:`build`; the allowed range of a field lives next to the field as
metadata (:func:`option`), so the help text and the check cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sdpo_env.errors import Problem, did_you_mean

T = TypeVar("T")
Provenance = Callable[[str], str]  # dotted key -> source that set it


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    gt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    nonempty: bool = False,
    absent: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with help text and the checks :func:`build` applies to it.

    Args:
        default: The default value; omit for a required field.
        help: One line for users: what the setting does.
        factory: Default factory for mutable defaults.
        min: Smallest allowed value (inclusive).
        max: Largest allowed value (inclusive).
        gt: Value must be strictly greater than this.
        choices: The allowed values.
        nonempty: Strings and lists must not be empty.
        absent: The value a run's stored settings mean when they lack this key: the behaviour before the option
            existed, where the default is another (read by ``agents.base.with_absent_options``).
    """
    metadata = {"help": help, "min": min, "max": max, "gt": gt, "choices": choices, "nonempty": nonempty}
    if absent is not dataclasses.MISSING:
        metadata["absent"] = absent
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_like(cls: type, name: str, default: Any = dataclasses.MISSING) -> Any:
    """The option ``name`` of dataclass ``cls`` (help text and checks), with its default or ``default``.

    Raises:
        KeyError: ``cls`` has no such field.
    """
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    meta = f.metadata
    return option(f.default if default is dataclasses.MISSING else default, meta["help"], min=meta["min"],
                  max=meta["max"], gt=meta["gt"], choices=meta["choices"], nonempty=meta["nonempty"],
                  absent=meta.get("absent", dataclasses.MISSING))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def join_key(prefix: str, key: str | int) -> str:
    """Dotted key for nested mappings, ``[i]`` for list items."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def _convert(tp: Any, value: Any, key: str, source: Provenance, problems: list[Problem]) -> Any:
    """Converts ``value`` to type ``tp`` or records a problem and returns ``dataclasses.MISSING``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for candidate in options:
            if candidate is type(None):
                continue
            trial: list[Problem] = []
            converted = _convert(candidate, value, key, source, trial)
            if not trial:
                return converted
            if len(options) == 2 and type(None) in options:  # X | None: the inner problem is the informative one
                problems.extend(trial)
                return dataclasses.MISSING
        problems.append(Problem(source(key), key, f"expected {_type_name(tp)}, got {_describe(value)}"))
        return dataclasses.MISSING
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(Problem(source(key), key, f"expected a mapping, got {_describe(value)}"))
            return dataclasses.MISSING
        built = build(tp, value, source=source, prefix=key, problems=problems)  # type: ignore[arg-type]
        return dataclasses.MISSING if built is None else built
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(Problem(source(key), key, f"expected {_type_name(tp)}, got {_describe(value)}"))
            return dataclasses.MISSING
        items = [_convert(item_type, v, join_key(key, i), source, problems) for i, v in enumerate(value)]
        return dataclasses.MISSING if any(i is dataclasses.MISSING for i in items) else items
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            problems.append(Problem(source(key), key, f"expected a mapping with string keys, got {_describe(value)}"))
            return dataclasses.MISSING
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    problems.append(Problem(source(key), key, f"expected {_type_name(tp)}, got {_describe(value)}"))
    return dataclasses.MISSING


def _check_range(field: dataclasses.Field, value: Any, key: str, source: Provenance, problems: list[Problem]) -> None:
    meta = field.metadata
    if value is None:
        return
    empty = not (value.strip() if isinstance(value, str) else value)
    if meta.get("nonempty") and isinstance(value, (str, list)) and empty:
        problems.append(Problem(source(key), key, "must not be empty"))
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        hint = did_you_mean(value, map(str, meta["choices"]))
        problems.append(Problem(source(key), key, f"got {value!r}; allowed: {allowed}.{hint}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(Problem(source(key), key, f"got {value!r}; must be a finite number"))
            return
        if meta.get("min") is not None and value < meta["min"]:
            problems.append(Problem(source(key), key, f"got {value!r}; must be >= {meta['min']}"))
        if meta.get("max") is not None and value > meta["max"]:
            problems.append(Problem(source(key), key, f"got {value!r}; must be <= {meta['max']}"))
        if meta.get("gt") is not None and value <= meta["gt"]:
            problems.append(Problem(source(key), key, f"got {value!r}; must be > {meta['gt']}"))


def build(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    source: Provenance,
    prefix: str = "",
    problems: list[Problem],
) -> T:
    """Builds ``cls`` from ``data``, appending every problem found to ``problems``.

    A dataclass may define ``check(self) -> list[tuple[str, str]]`` for cross-field rules; each returned
    ``(key, message)`` becomes a problem under ``prefix``.

    Args:
        cls: The dataclass to build.
        data: Parsed YAML or merged overrides.
        source: Maps a dotted key to where its value came from (a file path, "command line").
        prefix: Dotted key of ``data`` inside the whole document.
        problems: Receives the problems; the caller raises when it is non-empty.

    Returns:
        The instance, or a best-effort instance (defaults where values were bad) when problems were found;
        callers must not use it if ``problems`` grew.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = join_key(prefix, str(key))
        if key not in fields:
            hint = did_you_mean(str(key), fields)
            allowed = ", ".join(fields)
            problems.append(Problem(source(dotted), dotted, f"unknown key.{hint} Allowed here: {allowed}."))
            continue
        field = fields[key]
        tp = hints[key]
        converted = _convert(tp, value, dotted, source, problems)
        if converted is dataclasses.MISSING:
            continue
        _check_range(field, converted, dotted, source, problems)
        kwargs[key] = converted
    for name, field in fields.items():
        if name not in kwargs and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if name in data:
                continue  # already reported as a bad value
            dotted = join_key(prefix, name)
            what = field.metadata.get("help", "") or _type_name(hints[name])
            problems.append(Problem(source(dotted), dotted, f"missing required key ({what})"))
    try:
        instance = cls(**kwargs)
    except TypeError:
        return None  # type: ignore[return-value]  # required keys missing; already reported
    check = getattr(instance, "check", None)
    failed = any(k in fields and k not in kwargs for k in data)
    if callable(check) and not failed:  # cross-field rules only make sense when every given field converted
        for key, message in check():
            dotted = join_key(prefix, key) if key else prefix
            problems.append(Problem(source(dotted), dotted, message))
    return instance


def to_dict(instance: Any) -> Any:
    """A dataclass (nested) as plain data, for writing back to YAML."""
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {f.name: to_dict(getattr(instance, f.name)) for f in dataclasses.fields(instance)}
    if isinstance(instance, (list, tuple)):
        return [to_dict(v) for v in instance]
    if isinstance(instance, dict):
        return {k: to_dict(v) for k, v in instance.items()}
    return instance
