"""Composing the run configuration with Hydra's compose API, and checking names first."""
from __future__ import annotations

import difflib
import re
from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

from sidbench.errors import UserError
from sidbench.tracking import flatten

CONFIG_MODULE = "sidbench.conf"


class ConfigError(UserError, ValueError):
    """A bad name or value on the command line; the message is one line that says what to do."""

    exit_code = 2


#: Settings of the built-in methods that were renamed, so that a concept has one name in every
#: method (a bench override or a sweep addresses them alike): old key under `method.` -> (new key,
#: what to write, when more than the new name). An old key is one line naming the new one.
RENAMED: dict[str, tuple[str, str]] = {
    "g_beta1": ("betas_generator", "a pair, e.g. method.betas_generator=[0.9,0.999]"),
    "fake_beta1": ("betas_fake_score", "a pair, e.g. method.betas_fake_score=[0.0,0.999]"),
    "adam_betas": ("betas", "a pair, e.g. method.betas=[0.9,0.999]"),
    "adam_eps": ("eps", ""),
    "sigma_gen": ("sigma_init", ""),
    "grad_clip": ("clip_grad_norm", ""),
    "fake_score_clip_value": ("clip_grad_value_fake_score", ""),
    "lr_warmup": ("warmup_iterations", ""),
    "regression.pairs": ("num_teacher_samples", ""),
    "regression.sampler_steps": ("teacher_sampler_steps", ""),
    "regression.seed": ("teacher_sample_seed", ""),
    "regression.batch": ("teacher_sample_batch", ""),
    "regression.pairs_file": ("teacher_samples_file", ""),
    "regression.adapt_gray": ("regression.lpips_adapt_gray", ""),
}


def renamed_message(key: str) -> str | None:
    """The line for `method.<old name>` (a dotted key, from the command line or a config), else None."""
    old = key.lstrip("+~").removeprefix("method.")
    if old == key.lstrip("+~") or old not in RENAMED:
        return None
    new, hint = RENAMED[old]
    return f"method.{old} is now method.{new}" + (f" ({hint})" if hint else "")


def group_options(group: str) -> list[str]:
    """The choices of a config group: the methods' names for `method` (their configs are made from
    their settings classes), else the group's YAML files plus configs stored in Hydra's ConfigStore."""
    if group == "method":
        from sidbench.methods import METHODS

        return METHODS.names()
    names = {p.name.removesuffix(".yaml") for p in (files(CONFIG_MODULE) / group).iterdir() if p.name.endswith(".yaml")}
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo.get(group, {})
    names |= {k.removesuffix(".yaml") for k in repo}
    return sorted(names)


def store_method_config(name: str) -> None:
    """Store method `name`'s defaults (its settings class's, `sidbench.schema.defaults`) in Hydra's
    ConfigStore as `method/<name>`, a plain dict node: the types, bounds and choices are checked by
    `sidbench.schema`, whose errors are one line. A method without settings gets `{name}` alone.
    Imports the settings class only (a built-in's module imports no torch)."""
    from hydra.core.config_store import ConfigStore

    from sidbench.schema import defaults, method_settings

    settings = method_settings(name)
    node = {"name": name, **(defaults(settings) if settings is not None else {})}
    ConfigStore.instance().store(group="method", name=name, node=node)


def _choice(overrides: list[str], group: str, default: str) -> str:
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") == group:
            return value
    return default


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The resolved config for `sidbench run` overrides, after checking method and dataset names."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    overrides = list(overrides or [])
    for group, default in (("method", "sid"), ("dataset", "digits")):
        name = _choice(overrides, group, default)
        valid = group_options(group)
        if name not in valid:
            raise ConfigError(f"unknown {group} {name!r}; choose one of: {', '.join(valid)}")
    store_method_config(_choice(overrides, "method", "sid"))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except HydraException as e:
        lines = str(e).strip().splitlines()
        unknown = re.match(r"Could not override '([^']+)'", lines[0])
        if unknown:
            raise ConfigError(_unknown_key_message(unknown.group(1), overrides)) from e
        raise ConfigError("; ".join(line.strip() for line in lines if line.strip())) from e
    _refuse_old_names(cfg)
    OmegaConf.resolve(cfg)
    return cfg


def _refuse_old_names(cfg: DictConfig) -> None:
    """An old name of a setting that a preset or `+method.<key>=` brought in (a plain override of
    it is refused by Hydra first): one line naming the new one. A method whose settings still hold
    the name (a plugin's own setting) keeps it."""
    from sidbench.schema import docs, method_settings

    settings = method_settings(str(cfg.method.name))
    own = docs(settings) if settings is not None else {}
    absent = object()
    for old in RENAMED:
        if old not in own and OmegaConf.select(cfg.method, old, default=absent, throw_on_resolution_failure=False) is not absent:
            raise ConfigError(renamed_message(f"method.{old}"))


def _unknown_key_message(key: str, overrides: list[str]) -> str:
    """One line for an override of a setting that does not exist, with the closest real one (or
    the new name of a renamed one)."""
    renamed = renamed_message(key)
    if renamed is not None:
        return renamed
    rest = [o for o in overrides if o.partition("=")[0].lstrip("+~") != key]
    try:
        known = list(flatten(OmegaConf.to_container(compose(rest))))  # dotted keys, as MLflow's params
    except ConfigError:  # another override is bad as well: name this one without a suggestion
        known = []
    value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == key), "")
    if "." not in key:  # a misspelt group or top-level key ("methd=sid"): suggest among those, with the value
        top = sorted({"method", "dataset", "trainer", "eval", *(k.split(".")[0] for k in known)})
        close = difflib.get_close_matches(key, top, n=1)
        if close:
            return f"unknown setting {key!r}; did you mean {close[0]}={value}? (`sidbench run dry_run=true` prints every setting)"
    # a key given without its group ("teacher.path" for "dataset.teacher.path"), else a typo
    guess = [k for k in known if k.endswith("." + key)] or difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {guess[0]}? " if guess else ""
    return f"unknown setting {key!r}; {hint}(`sidbench run dry_run=true` prints every setting)"
