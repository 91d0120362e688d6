"""Registries of named components (learners, simulators, judges) with plug-ins by dotted path.

A name is either registered (``sdpo``) or a dotted path to the user's own class or factory
(``mypkg.learners:MyLearner`` or ``mypkg.learners.MyLearner``), so a user plugs in a component without editing the
package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sdpo_env.errors import SdpoEnvError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named factories of one kind of component.

    Args:
        kind: What is registered, for messages ("learner", "user simulator").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``.

        Raises:
            ValueError: ``name`` is already registered (two components must not share a name).
        """

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return add

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def get(self, name: str) -> T:
        """Returns the registered component, or imports ``module:attr`` / ``module.attr`` for a dotted path.

        Raises:
            UnknownNameError: not registered and not a dotted path; close names are suggested.
            SdpoEnvError: a dotted path whose module or attribute cannot be imported.
        """
        if name in self._entries:
            return self._entries[name]
        if ":" in name or "." in name:
            return import_dotted(name, self.kind)  # type: ignore[return-value]
        raise UnknownNameError(self.kind, name, self._entries,
                               hint="Or give your own class as a dotted path, e.g. mypkg.module:MyClass.")


def import_dotted(path: str, kind: str = "object") -> object:
    """Imports ``pkg.module:Attr`` or ``pkg.module.Attr``.

    Raises:
        SdpoEnvError: the module or the attribute does not exist; the message names which.
    """
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise SdpoEnvError(f"cannot import {kind} {path!r}: expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SdpoEnvError(f"cannot import {kind} {path!r}: module {module_name!r} not found ({exc}). "
                           "Is it installed or on PYTHONPATH?") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SdpoEnvError(f"cannot import {kind} {path!r}: module {module_name!r} has no attribute {attr!r}") from None
