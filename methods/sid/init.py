"""What `method=sid2a method.init=<...>` names, turned into a generator file.

`init` is, in the order tried: an existing path (a generator file, `generator.safetensors` or an
EDM-format `.pkl`, or a run folder holding `generator.safetensors`); a released generator's name
from the catalogue (`sidbench list`; downloaded once into the cache); an MLflow run id (the run
folder that run was logged from, its `sidbench.run_dir` tag). `check_init_form` checks the form
before a run starts and imports no torch; `resolve_init` finds the file (downloading a released
one) when the method is built.
"""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.methods.sid.settings import INIT_FORMS

#: An MLflow run id: 32 lowercase hex digits.
RUN_ID = re.compile(r"[0-9a-f]{32}")


def _released_names() -> dict:
    from sidbench.eval.published_generators import load_catalogue

    return load_catalogue()


#: The released generators SiD²A may start from: the SiD family's.
SID_FAMILY = ("sid", "sida", "sid2a")


def check_init_form(init: str) -> None:
    """A one-line ConfigError unless `init` is an existing path, the name of a released generator
    of the SiD family, or a run id."""
    if Path(init).expanduser().exists() or RUN_ID.fullmatch(init):
        return
    released = _released_names()
    if init in released:
        if released[init].method not in SID_FAMILY:
            raise ConfigError(f"method.init={init}: a {released[init].label} generator; SiD²A starts from a "
                              "generator of the SiD family (sid-*, sida-*, sid2a-* in `sidbench list`)")
        return
    raise ConfigError(f"method.init={init}: no such file or folder, released generator or MLflow run id; "
                      f"give {INIT_FORMS}")


def resolve_init(init: str, cfg: DictConfig | None = None, *, progress: bool = True) -> tuple[Path, str]:
    """(the generator file `init` names, which form named it: a path, a released generator or an
    MLflow run, in a few words). `cfg`: the run's full config, whose tracking store an MLflow run id
    is looked up in."""
    from sidbench.eval.generators import generator_file
    from sidbench.teachers.load import TeacherLoadError

    path = Path(init).expanduser()
    try:
        if path.exists():
            return generator_file(path), f"{path}"
        released = _released_names()
        if init in released:
            from sidbench.eval.published_generators import fetch_published

            check_init_form(init)  # of the SiD family
            entry = released[init]
            return fetch_published(entry, progress=progress), f"released generator {entry.name} ({entry.url})"
        if RUN_ID.fullmatch(init):
            from sidbench.tracking import find_run_dir, tracking_uri

            if cfg is None:
                raise ConfigError(f"method.init={init}: an MLflow run id needs the run's tracking store")
            try:
                run_dir = find_run_dir(init, tracking_uri(cfg))
            except ValueError as e:
                raise ConfigError(f"method.init={init}: {e}") from None
            except Exception as e:  # noqa: BLE001 - MLflow's own errors: an unknown id, an unreachable store
                raise ConfigError(f"method.init={init}: not a run of the tracking store {tracking_uri(cfg)} "
                                  f"({type(e).__name__}); give the run folder instead") from None
            return generator_file(run_dir), f"MLflow run {init} ({run_dir})"
    except TeacherLoadError as e:
        raise ConfigError(f"method.init={init}: {e}") from None
    check_init_form(init)  # raises: none of the forms
    raise AssertionError("unreachable")
