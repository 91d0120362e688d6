"""Finding and reading the YAML files users write: shipped names or paths, strict parsing, errors that point home."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sdpo_env.errors import Problem, UnknownNameError, ValidationError

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
TOP_LEVEL = "(top level)"


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``users`` or ``scenarios`` YAML files.

    A wheel carries them inside the package (``sdpo_env/_shipped/<kind>``); a source checkout or an editable
    install reads the repository's top-level folder.
    """
    inside = PACKAGE_DIR / "_shipped" / kind
    return inside if inside.is_dir() else PACKAGE_DIR.parent / kind


def shipped_names(kind: str) -> list[str]:
    """Names of the shipped YAML files of ``kind`` (without ``.yaml``)."""
    folder = shipped_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def looks_like_path(name: str) -> bool:
    """A value names a file (rather than a shipped name) if it has a YAML suffix or a path separator."""
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def resolve(kind: str, name_or_path: str | Path, singular: str) -> Path:
    """Turns a shipped name (``flip``) or a file path (``my/flip.yaml``) into an existing file path.

    Raises:
        UnknownNameError: neither a file nor a shipped name; close shipped names are suggested.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if looks_like_path(text) or path.is_file():
        if path.is_file():
            return path
        names = shipped_names(kind)
        raise UnknownNameError(singular, text, names, message=f"{singular} file {text!r} does not exist. Give an "
                               f"existing .yaml path or a shipped {singular}: {', '.join(names) or '(none)'}.")
    candidate = shipped_dir(kind) / f"{text}.yaml"
    if candidate.is_file():
        return candidate
    raise UnknownNameError(singular, text, shipped_names(kind),
                           hint="Give a shipped name or a path to your own .yaml file.")


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys instead of keeping the last one silently."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml_mapping(path: Path, error: type[ValidationError]) -> dict[str, Any]:
    """Reads a YAML file whose top level must be a mapping.

    Raises:
        error: the file cannot be read, is not UTF-8, is not valid YAML, is empty, or is not a mapping; the
            problem names the file and, for syntax errors, the line and column.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error([Problem(source, TOP_LEVEL, f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error([Problem(source, TOP_LEVEL, f"not UTF-8 text (byte {exc.start}); is this a YAML file?")]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else TOP_LEVEL
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error([Problem(source, where, f"invalid YAML: {reason}")]) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. absurd timestamps or deeply nested junk
        raise error([Problem(source, TOP_LEVEL, f"invalid YAML: {exc}")]) from None
    if data is None:
        raise error([Problem(source, TOP_LEVEL, "the file is empty; expected a mapping of keys to values")])
    if not isinstance(data, dict):
        raise error([Problem(source, TOP_LEVEL, f"expected a mapping of keys to values, got {type(data).__name__}")])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise error([Problem(source, repr(bad_keys[0]), "keys must be strings")])
    return data
