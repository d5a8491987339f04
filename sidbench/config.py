"""Composing the run configuration with Hydra's compose API, and checking names first.

The configs are the package's (`sidbench/conf`) and, after them, those in the folders named by
`$SIDBENCH_CONFIG_PATH` (separated by the OS path separator, `:` on Linux), laid out the same way:
`<folder>/dataset/<name>.yaml` is a dataset card, `<folder>/preset/<method>_<name>.yaml` a preset.
They reach Hydra as its search path (`hydra.searchpath`), so a card may extend a shipped one through
its defaults list, and the variable reaches every process a run starts (torchrun's workers, a
bench's cells). A package's own config wins over a file of the same name in such a folder.
"""
from __future__ import annotations

import difflib
import os
import re
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sidbench.errors import UserError
from sidbench.tracking import flatten

CONFIG_MODULE = "sidbench.conf"


class ConfigError(UserError, ValueError):
    """A bad name or value on the command line; the message is one line that says what to do."""

    exit_code = 2


#: Folders of the user's own configs, searched after the package's (see the module's docstring).
CONFIG_PATH_ENV = "SIDBENCH_CONFIG_PATH"


def config_dirs() -> list[Path]:
    """The folders named by `$SIDBENCH_CONFIG_PATH`, absolute, in order."""
    dirs = []
    for part in filter(None, os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep)):
        path = Path(part).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"{CONFIG_PATH_ENV} names {part!r}, which is not a folder; point it at the folder that "
                              "holds your dataset/ (and preset/) folders")
        dirs.append(path)
    return dirs


def group_files(group: str) -> dict[str, Path]:
    """{name: YAML file} of a config group: the package's, then the `$SIDBENCH_CONFIG_PATH` folders'
    (a name already found is not replaced, as in Hydra's search path)."""
    found: dict[str, Path] = {}
    for root in (Path(str(files(CONFIG_MODULE))), *config_dirs()):
        folder = root / group
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.name.endswith(".yaml"):
                    found.setdefault(p.name.removesuffix(".yaml"), p)
    return found


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
    their settings classes), else the group's YAML files (the package's and the
    `$SIDBENCH_CONFIG_PATH` folders') plus configs stored in Hydra's ConfigStore."""
    if group == "method":
        from sidbench.methods import METHODS

        return METHODS.names()
    names = set(group_files(group))
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo.get(group, {})
    names |= {k.removesuffix(".yaml") for k in repo}
    return sorted(names)


def _searchpath() -> list[str]:
    """The Hydra override that adds the `$SIDBENCH_CONFIG_PATH` folders to the search path."""
    dirs = config_dirs()
    if not dirs:
        return []
    quoted = ",".join("'file://" + d.as_posix().replace("\\", "\\\\").replace("'", "\\'") + "'" for d in dirs)
    return [f"hydra.searchpath=[{quoted}]"]


def group_config(group: str, name: str) -> DictConfig:
    """One config of a group as Hydra composes it (a card that extends another through its defaults
    list holds the other's keys too), e.g. a dataset card for `sidbench list`."""
    path = group_files(group).get(name)
    if path is not None:
        node = OmegaConf.load(path)
        if "defaults" not in node:  # the shipped cards: read as written, no Hydra needed
            return node
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    primary = f"sidbench_{group}_only"
    ConfigStore.instance().store(name=primary, node={"defaults": [{group: "???"}, "_self_"]})
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        return hydra_compose(config_name=primary, overrides=[f"{group}={name}", *_searchpath()])[group]


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
    overrides = preset_file_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = hydra_compose(config_name="config", overrides=[*overrides, *_searchpath()])
    except HydraException as e:
        lines = str(e).strip().splitlines()
        unknown = re.match(r"Could not override '([^']+)'", lines[0])
        if unknown:
            raise ConfigError(_unknown_key_message(unknown.group(1), overrides)) from e
        raise ConfigError("; ".join(line.strip() for line in lines if line.strip())) from e
    _refuse_undeclared_method_settings(cfg)
    _mark_changed_settings(cfg, overrides)
    OmegaConf.resolve(cfg)
    return cfg


# -- a preset from a file, and where a run's settings come from ----------------------------------------
def preset_file_overrides(overrides: list[str]) -> list[str]:
    """`preset_file=<path>` (a `sidbench tune` study's best.yaml, or any preset YAML) as Hydra sees it:
    the file stored in Hydra's ConfigStore as a preset that builds on the run's own preset
    (`<method>_<dataset>`, through the file's defaults list, added when it has none) and chosen with
    `preset=`. So the file's values replace the dataset preset's, and the command line wins over both."""
    import hashlib

    import yaml
    from hydra.core.config_store import ConfigStore

    given = [o for o in overrides if o.partition("=")[0].lstrip("+~") == "preset_file"]
    value = given[-1].partition("=")[2] if given else ""
    if value in ("", "null"):
        return overrides
    path = Path(value).expanduser().resolve()
    try:
        node = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"preset_file={value}: cannot read it ({type(e).__name__}); give a preset YAML such as the "
                          "best.yaml of a `sidbench tune` study") from None
    if not isinstance(node, dict):
        raise ConfigError(f"preset_file={value}: not a preset (a YAML mapping of settings)")
    if any(o.partition("=")[0].lstrip("+~") == "preset" for o in overrides):
        raise ConfigError(f"preset_file={value} and preset= cannot both be given: the file builds on the run's preset")
    own = f"{_choice(overrides, 'method', 'sid')}_{_choice(overrides, 'dataset', 'digits')}"
    names = [d for d in node.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
    if any(n != own for n in names):
        raise ConfigError(f"preset_file={value} builds on preset {names[0]}, not this run's {own}: it was made for "
                          "another method or dataset")
    if "defaults" not in node and own in group_files("preset"):
        node = {"defaults": [own, "_self_"], **node}
    name = "file-" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    ConfigStore.instance().store(group="preset", name=name, node=node, package="_global_")
    rest = [o for o in overrides if o.partition("=")[0].lstrip("+~") != "preset_file"]
    return [*rest, f"preset={name}", f"preset_file={path}"]


def _mark_changed_settings(cfg: DictConfig, overrides: list[str]) -> None:
    """A published or tuned run whose method settings the command line changes is no longer the
    published or tuned one: its `settings_source` becomes `derived` (unless the command line says)."""
    keys = [o.partition("=")[0].lstrip("+~") for o in overrides]
    if "settings_source" in keys or str(cfg.get("settings_source", "derived")) == "derived":
        return
    if any(k.startswith("method.") for k in keys):
        cfg.settings_source = "derived"


def _refuse_undeclared_method_settings(cfg: DictConfig) -> None:
    """A method setting its settings class does not declare, brought in by a preset file (a tuned
    best.yaml, a preset of one's own) or `+method.<key>=`: one line, naming the new name of a
    renamed one, else the closest declared one. Hydra refuses such a key as a plain override, but a
    preset merges it without a word, and the run would go on without the value it meant to set. A
    method whose settings still hold an old name (a plugin's own setting) keeps it; one without a
    settings class has only the old names refused."""
    from sidbench.schema import docs, method_settings
    from sidbench.tracking import flatten

    settings = method_settings(str(cfg.method.name))
    declared = {f"method.{k}" for k in (docs(settings) if settings is not None else {})} | {"method.name"}
    for key in flatten(OmegaConf.to_container(cfg.method, resolve=False), "method."):
        if key in declared:
            continue
        renamed = renamed_message(key)
        if renamed is not None:
            raise ConfigError(renamed)
        if settings is not None:
            close = [d for d in sorted(declared) if d.startswith(key)] or difflib.get_close_matches(key, sorted(declared), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"unknown setting {key!r} (from a preset file or +{key}=): method={cfg.method.name} declares no "
                              f"such setting; {hint}(`sidbench run method={cfg.method.name} dry_run=true` prints every setting)")


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
