"""Name -> class registries, filled by a decorator and by Python entry points (timm-style).

A method is one decorator (`@register_method("sid")` on its class). So that naming and listing
the methods never imports them (nor torch), the built-ins are also declared lazily in one
torch-free place (`sidbench/methods/__init__.py`: a name, a "module:attr" target and a one-line
description); the target is imported on the first `get(name)`, and its decorator then checks that
it matches the declaration. A declaration may also name attributes of the class by their own
targets (a method's `settings` class, in a torch-free module): `attribute(name, attr)` imports only
that target, so composing a config imports neither the method nor torch. Third-party packages declare an entry point in the group
`sidbench.methods` (`name = "package.module:Class"`): its name is known without loading it, and
the class is loaded on `get(name)` (or by `describe()`, for its description). A method that is not
packaged (one file on the Python path) is loaded by naming its module in `$SIDBENCH_PLUGINS`
(comma-separated): the module registers itself with the decorator when imported, on the first
lookup of a name not declared here; torchrun's workers inherit the variable.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from sidbench.errors import UserError

T = TypeVar("T")


def import_plugin(module: str) -> None:
    """Import a `$SIDBENCH_PLUGINS` module, also from the current folder (as `python -m` would: the
    README's `SIDBENCH_PLUGINS=my_method sidbench run ...` beside my_method.py). Appended, not put
    first, so a file there cannot shadow an installed package. A module that is nowhere is one line;
    an import error inside the plugin keeps its traceback (the plugin's own bug)."""
    import sys

    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):  # something the plugin imports is missing
            raise
        raise PluginNotFoundError(f"SIDBENCH_PLUGINS names {module!r}, which is neither in the current folder ({here}) "
                                  "nor on the Python path; run from the folder that holds it, or set PYTHONPATH") from None


class PluginNotFoundError(UserError, ImportError):
    """A module named in `$SIDBENCH_PLUGINS` cannot be found."""

    exit_code = 2


class UnknownNameError(UserError, KeyError):
    """A name that is not registered; the message lists the valid names."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError quotes its message; we want one plain line
        return str(self.args[0])


def _target_of(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _resolve(target: str) -> Any:
    """The object a "package.module:Attr.sub" target names (the entry-point syntax)."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        #: declared but not imported yet: name -> "module:attr" (built-ins and entry points)
        self._lazy: dict[str, str] = {}
        #: names from entry points not loaded yet (their description is a placeholder until loaded)
        self._entry_point_names: set[str] = set()
        #: attributes declared with a lazy entry, each by its own "module:attr" target
        self._lazy_attributes: dict[str, dict[str, str]] = {}
        self._discovered = False

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator: `@METHODS.register("sid", "Score identity Distillation")`. The description
        defaults to the object's `description` attribute, then to its docstring's first line."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._items[name]!r} and {obj!r})")
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            desc = description or getattr(obj, "description", "") or (doc[0] if doc else "")
            target = self._lazy.get(name)
            if target is not None and name not in self._entry_point_names:  # a lazy declaration
                if target != _target_of(obj):
                    raise ValueError(f"{self.kind} {name!r} is registered twice (declared as {target!r}, "
                                     f"registered by {_target_of(obj)!r})")
                declared = self._descriptions[name]
                if declared and desc and declared != desc:
                    raise ValueError(f"{self.kind} {name!r}: its description {desc!r} differs from the one declared "
                                     f"with register_lazy ({declared!r}); make them the same")
                desc = declared or desc
                for attr, attr_target in self._lazy_attributes.get(name, {}).items():
                    if _target_of(getattr(obj, attr, None)) != attr_target:
                        raise ValueError(f"{self.kind} {name!r}: its {attr} is {_target_of(getattr(obj, attr, None))!r}, "
                                         f"declared as {attr_target!r} with register_lazy; make them the same")
            self._lazy.pop(name, None)
            self._entry_point_names.discard(name)
            self._items[name] = obj
            self._descriptions[name] = desc
            return obj

        return decorator

    def register_lazy(self, name: str, target: str, description: str, **attributes: str) -> None:
        """Declare `name` without importing it: `target` ("package.module:Class") is imported on
        the first `get(name)`; `description` is what `describe()` shows until then (and must
        match what the decorator on the class finds). `attributes` name attributes of the class
        by their own targets, for `attribute` (the decorator checks them too)."""
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target {target!r} is not of the form 'package.module:Attr'")
        known = self._lazy.get(name) or (_target_of(self._items[name]) if name in self._items else None)
        if known is not None and known != target:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({known!r} and {target!r})")
        if name not in self._items:
            self._lazy[name] = target
            self._descriptions[name] = description
            self._lazy_attributes[name] = dict(attributes)

    def _discover(self) -> None:
        """Import the `$SIDBENCH_PLUGINS` modules and note the entry points' names (not loaded)."""
        if self._discovered:
            return
        self._discovered = True
        for module in filter(None, (m.strip() for m in os.environ.get("SIDBENCH_PLUGINS", "").split(","))):
            import_plugin(module)
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items or ep.name in self._lazy:
                continue  # a built-in or an explicit registration wins
            self._lazy[ep.name] = ep.value
            self._entry_point_names.add(ep.name)
            self._descriptions[ep.name] = f"(plugin, {ep.value})"

    def _load(self, name: str) -> T:
        obj = _resolve(self._lazy[name])
        if name not in self._items:  # not registered by its module on import: an undecorated class
            declared = "" if name in self._entry_point_names else self._descriptions[name]
            self._lazy.pop(name)
            self._entry_point_names.discard(name)  # a plugin's own description replaces the placeholder
            self.register(name, declared)(obj)
        return self._items[name]

    def names(self) -> list[str]:
        """Every name, without importing any (the `$SIDBENCH_PLUGINS` modules are imported)."""
        self._discover()
        return sorted({*self._items, *self._lazy})

    def describe(self) -> dict[str, str]:
        """One line per name. Lazy built-ins are not imported (their declared line is shown);
        plugins from entry points are loaded, for their own description."""
        self._discover()
        for name in sorted(self._entry_point_names):
            self._load(name)
        return {n: self._descriptions[n] for n in self.names()}

    def get(self, name: str) -> T:
        if name not in self._items and name not in self._lazy:
            self._discover()
        if name in self._items:
            return self._items[name]
        if name in self._lazy:
            return self._load(name)
        raise UnknownNameError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")

    def attribute(self, name: str, attr: str) -> Any:
        """`get(name).<attr>` (None if it has none). For a lazy declaration that names `attr`'s
        target, only that target is imported, not the object."""
        target = self._lazy_attributes.get(name, {}).get(attr)
        if name not in self._items and name in self._lazy and target is not None:
            return _resolve(target)
        return getattr(self.get(name), attr, None)

    def __contains__(self, name: str) -> bool:
        if name in self._items or name in self._lazy:
            return True
        self._discover()
        return name in self._items or name in self._lazy
