"""Name -> class registries, filled by a decorator and by Python entry points (timm-style).

Built-in methods register when `sidbench.methods` is imported; third-party packages declare an
entry point in the group `sidbench.methods` (`name = "package.module:Class"`) and are loaded on
the first lookup, without touching this repository. A method that is not packaged (one file on
the Python path) is loaded by naming its module in `$SIDBENCH_PLUGINS` (comma-separated): the
module registers itself with the decorator when imported; torchrun's workers inherit the variable.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want one plain line
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._entry_points_loaded = False

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator: `@METHODS.register("sid", "Score identity Distillation")`."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._items[name]!r} and {obj!r})")
            self._items[name] = obj
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._descriptions[name] = description or getattr(obj, "description", "") or (doc[0] if doc else "")
            return obj

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for module in filter(None, (m.strip() for m in os.environ.get("SIDBENCH_PLUGINS", "").split(","))):
            importlib.import_module(module)
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue  # a built-in or an explicit registration wins
            obj = ep.load()
            if ep.name not in self._items:  # the module may have registered itself on import
                self.register(ep.name)(obj)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        self._load_entry_points()
        return {n: self._descriptions[n] for n in sorted(self._items)}

    def get(self, name: str) -> T:
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items
