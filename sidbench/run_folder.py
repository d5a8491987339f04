"""A run's folder: its name, who holds it, and whether a start may use it.

A run folder (`<output_root>/<dataset>/<run_name>`) belongs to one run of one configuration:
  config.yaml     the resolved settings the run started with
  overrides.yaml  the command line's overrides, so that `resume=<run dir>` alone rebuilds the config
  run.json        the MLflow run that records it (known before the first checkpoint)
  checkpoint.pt   the last checkpoint; metrics.jsonl every logged line; samples/; generator.safetensors
  .lock           held while a process writes the folder (a second writer is refused in one line)

A start that names an existing folder continues that run only if its settings are the folder's,
except those in `RESUMABLE` (where and how it runs, how long, how progress is reported); any other
difference is one line naming the settings. A folder whose run stopped before its first checkpoint
has nothing to continue: a start of the same settings begins it again with clean records (the
abandoned MLflow run is marked KILLED, its metrics.jsonl is kept as metrics.jsonl.<n>).
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sidbench.config import ConfigError, renamed_message
from sidbench.errors import InputError
from sidbench.eval.protocol import REPORTING_SETTINGS
from sidbench.search_space import value_override

CONFIG_NAME = "config.yaml"
OVERRIDES_NAME = "overrides.yaml"
RECORD_NAME = "run.json"
LOCK_NAME = ".lock"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"

#: Settings a continued run may change: where and how it runs (folders, store, device, processes,
#: micro-batch), how long (budget, time cap) and how its progress is reported (ticks, evaluation
#: points, checkpoints, sample grids, the final evaluation's size). Everything else fixes what the
#: run computes. A key stands for every setting under it.
RESUMABLE = (
    "output_root", "run_name", "resume", "dry_run", "tracking", "device", "threads", "processes", "data",
    "settings_source", "tuning_flops", "preset_file",
    "trainer.batch_gpu", "trainer.budget", "trainer.kimg", "trainer.max_seconds", "trainer.count_flops",
    "trainer.tick_kimg", "trainer.eval_every_kimg", "trainer.eval_at_kimg", "trainer.eval_at_fraction",
    "trainer.eval_log_points", "trainer.checkpoint_every_kimg", "trainer.sample_grids",
    "eval.enabled", "eval.batch_size", "eval.final_samples", *REPORTING_SETTINGS,
)

FOLDER_NAME = re.compile(r"[A-Za-z0-9_.+-]+")  # '+': a bench's default id joins its datasets


def check_folder_name(value: str, key: str) -> str:
    """`value` as one folder name (letters, digits, '-', '_', '.', '+'; not '.' or '..'), else one line."""
    if not FOLDER_NAME.fullmatch(value) or set(value) == {"."}:
        raise ConfigError(f"{key}={value!r} must be a single folder name of letters, digits, '-', '_', '.' and '+' "
                         f"(not '..', no '/'), e.g. {key}=my-run")
    return value


def new_folder(root: Path, method: str) -> Path:
    """A folder for a run without a run_name: <method>-<date>-<time>, made here (exclusively, so
    two runs started in the same second get two folders)."""
    stem = f"{method}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    for n in range(1, 1000):
        path = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"cannot create the run folder {path} ({e.strerror or e}); set output_root to a "
                             "folder you can write") from None
    raise InputError(f"no free run folder name under {root} for {stem}; give run_name=")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESUMABLE)


_MISSING = object()


def _differences(stored: dict[str, Any], cfg: DictConfig, defaults: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, stored value, new value) of the settings (other than `RESUMABLE`) that differ; `_MISSING`
    where one side lacks the key. A setting the stored run lacks (one sidbench added after the run
    started) is unchanged where it has its default value (`defaults`, flat keys): a new setting's
    default keeps what runs computed before."""
    old, new = _flat(stored), _flat(OmegaConf.to_container(cfg, resolve=True))
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a is _MISSING and key in defaults and defaults[key] == b:
            continue
        if a != b and not _resumable(key):
            out.append((key, a, b))
    return out


def changed_settings(stored: dict[str, Any], cfg: DictConfig, defaults: dict[str, Any] | None = None) -> list[str]:
    """The settings (other than `RESUMABLE`) whose values differ, as 'key old -> new' (see `_differences`)."""
    shown = [(key, "(none)" if a is _MISSING else a, "(none)" if b is _MISSING else b)
             for key, a, b in _differences(stored, cfg, defaults or {})]
    return [f"{key} {a} -> {b}" for key, a, b in shown]


def restoring_overrides(stored: dict[str, Any], cfg: DictConfig, defaults: dict[str, Any] | None = None) -> list[str]:
    """Command-line overrides that give `cfg` the stored run's settings again (e.g. after a preset's
    defaults changed): each differing key at its stored value, or at its default where the run
    predates the key."""
    defaults = defaults or {}
    out = []
    for key, a, b in _differences(stored, cfg, defaults):
        if a is _MISSING:
            if key in defaults:
                out.append(value_override(key, defaults[key]))
        else:
            out.append(value_override(("+" if b is _MISSING else "") + key, a))
    return out


def default_settings(cfg: DictConfig) -> dict[str, Any]:
    """The flat defaults of `cfg`'s method on its dataset (the preset included), no override; none
    where those names do not compose (a dataset card whose `name` is not its file's), so that
    every difference counts."""
    from sidbench.config import compose

    try:
        defaults = compose([f"method={cfg.method.name}", f"dataset={cfg.dataset.name}"])
    except ConfigError:
        return {}
    return _flat(OmegaConf.to_container(defaults, resolve=True))


def older_names(stored: dict[str, Any]) -> str | None:
    """The first of a stored config's method settings that sidbench has renamed since, as the
    rename's line; None when it has none (a run from before the names were unified)."""
    method = stored.get("method") if isinstance(stored, dict) else None
    for key in _flat(method) if isinstance(method, dict) else ():
        message = renamed_message(f"method.{key}")
        if message:
            return message
    return None


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: unreadable ({type(e).__name__}: {e}); the run folder is damaged") from None


def stored_overrides(run_dir: Path) -> list[str] | None:
    """The overrides the run in `run_dir` was started with (None: a folder from before they were kept)."""
    path = run_dir / OVERRIDES_NAME
    return [str(o) for o in read_yaml(path)] if path.is_file() else None


def merge_overrides(stored: list[str], given: list[str]) -> list[str]:
    """`stored` with each key that `given` sets replaced: a continued run's command line adds to, and
    wins over, the one it started with (Hydra refuses one key set twice)."""
    def key(o: str) -> str:
        return o.partition("=")[0].lstrip("+~")

    keys = {key(o) for o in given}
    return [o for o in stored if key(o) not in keys] + list(given)


@dataclass(frozen=True)
class Start:
    """What a start does with its folder: `new` (a fresh folder), `resume` (continue the checkpoint
    and the MLflow run `mlflow_run_id`) or `restart` (the same settings ran before but left no
    checkpoint: begin again, closing the abandoned MLflow run `mlflow_run_id`)."""

    run_dir: Path
    kind: str
    mlflow_run_id: str | None = None


def recorded_run_id(run_dir: Path) -> str | None:
    path = run_dir / RECORD_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("mlflow_run_id") or None
    except (OSError, ValueError):
        return None


RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids (uuid4 hex)


def resume_dir(cfg: DictConfig) -> Path:
    """The folder `resume=` names: a run folder, or the folder of an MLflow run id."""
    value = str(cfg.resume)
    path = Path(value)
    if path.is_dir():
        return path
    where = f"resume={value}"
    if not RUN_ID.fullmatch(value):
        raise ConfigError(f"{where}: no such run folder, and not an MLflow run id (32 hex digits); "
                          "give a run folder (runs/<dataset>/<name>) or a run id")
    from sidbench.tracking import find_run_dir, tracking_uri

    uri = tracking_uri(cfg)
    # MLflow would create a missing SQLite store (and log about it): there is no run in one
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"{where}: no such run folder, and no MLflow store at {uri} to look the run id up in")
    try:
        path = find_run_dir(value, uri)
    except Exception as e:  # noqa: BLE001 - not found, no folder tag, store unreachable: the reason is in the message
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(f"{where}: not a run folder, and not a run of the MLflow store {uri} ({reason})") from e
    if not path.is_dir():
        raise ConfigError(f"{where}: the MLflow run's folder {path} does not exist")
    return path


def named_dir(cfg: DictConfig) -> Path | None:
    """The folder a start of `cfg` without `resume=` uses by name; None for the default name (a new
    folder, chosen when the run starts)."""
    if cfg.get("run_name") in (None, ""):
        return None
    return Path(str(cfg.output_root)) / str(cfg.dataset.name) / check_folder_name(str(cfg.run_name), "run_name")


def check_creatable(path: Path) -> None:
    """One line if `path` cannot become a folder because something on its way is a file."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{p} is a file, not a folder; set output_root (or run_name) to a folder")
            return


def plan_start(cfg: DictConfig, run_dir: Path) -> Start:
    """How a run of `cfg` may use `run_dir` (its resume folder, or the folder its name gives);
    one line when it may not. Reads only: `claim` and `restart_records` act on the answer."""
    check_creatable(run_dir)
    if cfg.get("resume"):
        where = f"resume={cfg.resume}"
    else:
        where = f"run_name={run_dir.name}"
    config = run_dir / CONFIG_NAME
    if not config.is_file():
        if cfg.get("resume"):
            raise ConfigError(f"{where}: {run_dir} is not a run folder (no {CONFIG_NAME})")
        if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            raise ConfigError(f"{run_dir} exists and is not a run folder; choose another run_name")
        return Start(run_dir, "new")
    stored = read_yaml(config) or {}
    older = older_names(stored)
    if older:
        raise ConfigError(f"{where}: the run in {run_dir} was made by an older sidbench ({older}); resume it with "
                          "the version that started it (its MLflow tag code_version), or choose another run_name")
    defaults = default_settings(cfg)
    changed = changed_settings(stored, cfg, defaults)
    if changed:
        shown = "; ".join(changed[:4]) + (f"; ... ({len(changed)} in all)" if len(changed) > 4 else "")
        # a default that changed since the run started (a preset's) is given back by these
        restore = shlex.join(restoring_overrides(stored, cfg, defaults))  # to paste into a shell
        what = f"add {restore} to continue it as it started" + ("" if cfg.get("resume") else ", or choose another run_name")
        raise ConfigError(f"{where}: the run in {run_dir} has other settings ({shown}); only where it runs, its budget "
                         f"and its reporting may change on resume (README: Run folders); {what}")
    if (run_dir / CHECKPOINT_NAME).is_file():
        from sidbench.trainer.checkpoint import load_checkpoint

        run_id = load_checkpoint(run_dir / CHECKPOINT_NAME, mmap=True).get("mlflow_run_id") or None
        return Start(run_dir, "resume", run_id)
    if cfg.get("resume"):
        raise ConfigError(f"{where}: {run_dir} holds no {CHECKPOINT_NAME} (it stopped before its first); "
                         f"start it again with run_name={run_dir.name} and without resume=")
    return Start(run_dir, "restart", recorded_run_id(run_dir))


class FolderInUseError(InputError):
    """Another process writes the run folder."""


def claim(run_dir: Path) -> Any:
    """Hold `run_dir` for this process (a lock released when it ends, or dies); one line if another
    process holds it. Returns the held lock."""
    from filelock import FileLock, Timeout

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # output_root names a file, or a folder we may not write
        raise InputError(f"cannot create the run folder {run_dir} ({e.strerror or e}); set output_root to a "
                         "folder you can write") from None
    lock = FileLock(str(run_dir / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderInUseError(f"{run_dir} is in use by another sidbench run; wait for it to end, or choose another "
                               "run_name") from None
    return lock


def check_not_in_use(run_dir: Path) -> None:
    """One line if a process holds `run_dir` now (asked before starting processes that would claim it)."""
    if (run_dir / LOCK_NAME).exists():
        claim(run_dir).release()


def restart_records(run_dir: Path, abandoned_run_id: str | None, uri: str | None) -> None:
    """Clean records for a run begun again: the abandoned attempt's metrics.jsonl kept aside as
    metrics.jsonl.<n>, and its MLflow run, if still RUNNING, marked KILLED."""
    metrics = run_dir / METRICS_NAME
    if metrics.is_file():
        n = 1
        while (run_dir / f"{METRICS_NAME}.{n}").exists():
            n += 1
        metrics.rename(run_dir / f"{METRICS_NAME}.{n}")
    if abandoned_run_id and uri:
        from sidbench.tracking import close_abandoned_run

        close_abandoned_run(uri, abandoned_run_id)


def write_records(run_dir: Path, cfg: DictConfig, overrides: list[str] | None) -> None:
    """config.yaml and overrides.yaml of a run that starts (not of one that resumes)."""
    from sidbench.atomic import write_text_atomic

    write_text_atomic(run_dir / CONFIG_NAME, OmegaConf.to_yaml(cfg))
    if overrides is not None:
        write_text_atomic(run_dir / OVERRIDES_NAME, yaml.safe_dump(list(overrides)))


def record_mlflow_run(run_dir: Path, run_id: str | None) -> None:
    from sidbench.atomic import write_text_atomic

    write_text_atomic(run_dir / RECORD_NAME, json.dumps({"mlflow_run_id": run_id or "",
                                                         "started": dt.datetime.now().isoformat(timespec="seconds")}))
