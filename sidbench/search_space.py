"""A method's search space for `sidbench tune`: which settings a study varies, and over what range.

A method declares it next to its settings, as the class attribute `search_space` of its settings
class (methods/base.py's `Method.settings`): full dotted config keys, the method's own under
`method.` and any other setting of the run under its group (`trainer.ema_rampup`), each with its
range::

    @dataclass
    class MySettings:
        lr: float = setting(1e-4, gt=0, doc="...")
        alpha: float = setting(1.0, doc="...")

        search_space: ClassVar[SearchSpace] = {
            "method.lr": log_uniform(1e-6, 1e-3),       # learning rates: log-uniform
            "method.alpha": uniform(0.5, 1.5),
            "trainer.ema_rampup": uniform(0.02, 0.5),
        }

The published value of every searched setting lies inside its range (tests/test_search_space.py
checks it for the built-ins). `when="method.gan.enabled"` searches a setting only when that key of
the run's config is true (weights of a head that is off are not searched). The command line can
replace or drop a range: `space.method.lr=log(1e-5,1e-3)`, `space.method.alpha=null`.

No torch and no Optuna here: settings modules import this file when a config is composed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sidbench.config import ConfigError

KINDS = ("uniform", "log", "int", "intlog", "choice")


@dataclass(frozen=True)
class Param:
    """One searched setting: `kind` uniform | log (floats), int | intlog (integers), or choice."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    when: str | None = None

    @property
    def log(self) -> bool:
        return self.kind in ("log", "intlog")

    def describe(self) -> str:
        """The range as the command line writes it: `log(1e-06,0.001)`."""
        if self.kind == "choice":
            return f"choice({','.join(map(str, self.choices))})"
        return f"{self.kind}({self.low:g},{self.high:g})"

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high


SearchSpace = dict[str, Param]


def uniform(low: float, high: float, *, when: str | None = None) -> Param:
    return Param("uniform", float(low), float(high), when=when)


def log_uniform(low: float, high: float, *, when: str | None = None) -> Param:
    """Log-uniform: for learning rates and weights that matter by their order of magnitude."""
    return Param("log", float(low), float(high), when=when)


def integer(low: int, high: int, *, log: bool = False, when: str | None = None) -> Param:
    return Param("intlog" if log else "int", int(low), int(high), when=when)


def choice(*options: Any, when: str | None = None) -> Param:
    return Param("choice", choices=tuple(options), when=when)


# -- the method's declaration, and the command line's changes --------------------------------------
def declared_space(method: str) -> SearchSpace:
    """The search space method `method` declares (its settings class's `search_space`; {}: none)."""
    from sidbench.schema import method_settings

    settings = method_settings(method)
    return dict(getattr(settings, "search_space", None) or {})


_PARAM = re.compile(r"\s*([a-z]+)\s*\((.*)\)\s*")


def _number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"space.{key}: {text.strip()!r} is not a number") from None


def parse_param(key: str, text: str) -> Param | None:
    """`space.<key>=<text>` of the command line: log(1e-5,1e-3), uniform(0.5,1.5), int(1,10),
    intlog(16,4096), choice(a,b) or null (the setting is not searched)."""
    if text.strip() in ("null", "none", "None", ""):
        return None
    m = _PARAM.fullmatch(text)
    if not m or m.group(1) not in KINDS:
        raise ConfigError(f"space.{key}={text}: write one of {', '.join(k + '(a,b)' for k in KINDS[:4])}, "
                          "choice(x,y,...) or null, e.g. space.method.lr=log(1e-5,1e-3)")
    kind, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
    if kind == "choice":
        return choice(*(_scalar(a) for a in args if a))
    if len(args) != 2:
        raise ConfigError(f"space.{key}={text}: {kind}(low,high) takes two numbers")
    low, high = (_number(a, key) for a in args)
    if kind in ("int", "intlog"):
        if low != int(low) or high != int(high):
            raise ConfigError(f"space.{key}={text}: the ends of an integer range are integers")
        return integer(int(low), int(high), log=kind == "intlog")
    return Param(kind, low, high)


def _scalar(text: str) -> Any:
    value = OmegaConf.create({"v": text}).v  # YAML's reading: 3 -> int, 0.5 -> float, true -> bool
    return value


def apply_changes(space: SearchSpace, changes: Mapping[str, Param | None]) -> SearchSpace:
    """The declared space with the command line's ranges put in (None drops a setting)."""
    out = dict(space)
    for key, param in changes.items():
        if param is None:
            if key not in out:
                raise ConfigError(f"space.{key}=null: {key} is not in the search space ({', '.join(out) or 'empty'})")
            out.pop(key)
        else:
            out[key] = param
    return out


# -- checking, before anything starts ---------------------------------------------------------------
def active(space: SearchSpace, cfg: DictConfig) -> SearchSpace:
    """The settings searched for this config: those without `when`, or whose `when` key is true."""
    return {k: p for k, p in space.items() if p.when is None or bool(OmegaConf.select(cfg, p.when, default=False))}


def check_space(space: SearchSpace, cfg: DictConfig) -> None:
    """One ConfigError line for the first bad entry: an unknown setting, an empty or reversed
    range, a log range that reaches 0, a range whose ends the setting itself refuses, a float range
    for an integer setting."""
    if not space:
        raise ConfigError(f"method={cfg.method.name} declares no search space; give one with space.<key>=..., e.g. "
                          "space.method.lr=log(1e-5,1e-3) (docs/tuning.md)")
    absent = object()
    for key, p in space.items():
        if p.kind not in KINDS:
            raise ConfigError(f"space.{key}: kind {p.kind!r} is not one of {', '.join(KINDS)}")
        if p.when is not None and OmegaConf.select(cfg, p.when, default=absent) is absent:
            raise ConfigError(f"space.{key}: its condition when={p.when!r} names no setting of method={cfg.method.name}")
        value = OmegaConf.select(cfg, key, default=absent, throw_on_resolution_failure=False)
        if value is absent or isinstance(value, DictConfig):
            raise ConfigError(_unknown(key, cfg))
        if p.kind == "choice":
            if not p.choices:
                raise ConfigError(f"space.{key}=choice(): give at least one value")
        else:
            if not (math.isfinite(p.low) and math.isfinite(p.high)) or not p.low < p.high:
                raise ConfigError(f"space.{key}={p.describe()}: the range is empty; give low < high")
            if p.log and p.low <= 0:
                raise ConfigError(f"space.{key}={p.describe()}: a log range needs low > 0")
        _check_ends(key, p, cfg)


def _unknown(key: str, cfg: DictConfig) -> str:
    from sidbench.tracking import flatten

    known = list(flatten(OmegaConf.to_container(cfg, resolve=True)))
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (f"space.{key}: method={cfg.method.name} has no setting {key}; {hint}"
            "(keys are full config keys: method.<setting>, trainer.<setting>; `sidbench run dry_run=true` prints every one)")


def _check_ends(key: str, p: Param, cfg: DictConfig) -> None:
    """Both ends (or every choice) must be values the setting accepts (its schema's type and bounds)."""
    from sidbench.schema import _check_value, _split_optional

    found = schema_field(key, str(cfg.method.name))
    if found is None:
        return  # a key no schema types (a plugin's free-form setting): the run checks it
    tp, meta = found
    base, _ = _split_optional(tp)
    if p.kind in ("int", "intlog") and base is float:
        tp = float  # an integer range of a float setting is fine
    if p.kind in ("uniform", "log") and base is int:
        raise ConfigError(f"space.{key}={p.describe()}: {key} is an integer setting; use int(a,b) or intlog(a,b)")
    values = p.choices if p.kind == "choice" else (p.low, p.high)
    for v in values:
        v = int(v) if p.kind in ("int", "intlog") else v
        try:
            _check_value(tp, meta, v, key)
        except ConfigError as e:
            raise ConfigError(f"space.{key}={p.describe()}: {e}") from None


def schema_field(key: str, method: str) -> tuple[Any, Mapping[str, Any]] | None:
    """(type, metadata) of the schema field for a dotted config key, or None when no schema names it."""
    from sidbench.schema import RunSchema, _split_optional, method_settings

    parts = key.split(".")
    if parts[0] == "method":
        node: Any = method_settings(method)
        parts = parts[1:]
    else:
        node = RunSchema
    tp: Any = node
    meta: Mapping[str, Any] = {}
    for part in parts:
        base, _ = _split_optional(tp)
        if not (isinstance(base, type) and dataclasses.is_dataclass(base)):
            return None
        fields = {f.name: f for f in dataclasses.fields(base)}
        if part not in fields:
            return None
        tp, meta = typing.get_type_hints(base)[part], fields[part].metadata
    return tp, meta


def value_override(key: str, value: Any) -> str:
    """`key=value` for Hydra, the value written so that it reads back the same (floats by repr;
    lists and dicts element by element; a string quoted where Hydra would read it otherwise)."""
    return f"{key}={_hydra_value(value)}"


def _hydra_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (not re.fullmatch(r"[A-Za-z0-9_.+-]+", value) or _reads_as_another_type(value)):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def _reads_as_another_type(text: str) -> bool:
    """Whether Hydra would read `text`, unquoted, as a number, a bool or null."""
    if text.lower() in ("null", "true", "false"):
        return True
    try:
        float(text)  # also nan and inf
    except ValueError:
        return False
    return True
