"""MLflow logging: one experiment per dataset, one run per training run, metrics against kimg.

The default store is a local SQLite file (no server); `MLFLOW_TRACKING_URI` or `tracking.uri`
overrides it. Only rank 0 logs; other ranks get a `NullTracker`.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sidbench.errors import InputError
from sidbench.eval.protocol import REPORTING_SETTINGS


# Experiment tags. `mlflow.experimentKind` = "custom_model_development" marks a model-training
# experiment for MLflow 3's UI ("Machine learning" in its JS; "genai_development" is the other kind),
# which otherwise opens it as a GenAI app (traces, token usage). MLflow 3.17's UI reads it only with
# its GenAI/Model training switch off; see sidbench.harness.ui for the addresses that open the runs.
EXPERIMENT_TAGS: dict[str, str] = {"mlflow.experimentKind": "custom_model_development"}


def default_tracking_uri(root: str | Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def tracking_uri(cfg: DictConfig) -> str:
    """Config first, then the environment, then a SQLite file under the runs folder."""
    if cfg.tracking.get("uri"):
        return str(cfg.tracking.uri)
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(cfg.output_root)


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"method.alpha": "1.2", ...} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(d)[:6000]
    return out


# Keys that say where and how a run is kept or started, not what it computes: left out of its hashes.
BOOKKEEPING_KEYS = ("output_root", "run_name", "resume", "dry_run", "tracking", "device", "threads", "processes", "data",
                    # labels of where the settings came from (the leaderboard keeps such rows apart itself)
                    "settings_source", "tuning_flops", "preset_file")


def _without_seeds(node: Any) -> Any:
    """`node` without the keys that are seeds (`seed`, `*_seed`): values interpolated from
    `trainer.seed` (a method's `teacher_sample_seed`) are resolved by then, and are seeds too."""
    if isinstance(node, dict):
        return {k: _without_seeds(v) for k, v in node.items() if not (k == "seed" or str(k).endswith("_seed"))}
    if isinstance(node, list):
        return [_without_seeds(v) for v in node]
    return node


def settings_hash(cfg: DictConfig, with_seed: bool = False) -> str:
    """A short hash of what a run computes: the resolved config without bookkeeping, and without
    its seeds unless `with_seed` (runs of equal settings and different seeds form one leaderboard
    row; a bench recognises a finished cell by the hash with its seeds)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for key in BOOKKEEPING_KEYS:
        data.pop(key, None)
    for dotted in REPORTING_SETTINGS:  # what else is measured changes nothing a run computes
        group, _, key = dotted.partition(".")
        if isinstance(data.get(group), dict):
            data[group].pop(key, None)
    if not with_seed:
        data = _without_seeds(data)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """The tags that say what a run is, for the leaderboard and MLflow's runs table; the config's
    `tracking.tags` (a bench's id, a user's labels) ride along."""
    budget = cfg.trainer.budget if cfg.trainer.get("kimg") is None else {"unit": "kimg", "value": cfg.trainer.kimg}
    tags = {"method": str(cfg.method.name), "dataset": str(cfg.dataset.name), "seed": str(cfg.trainer.seed),
            "metric": str(cfg.eval.metric), "budget": f"{budget['unit']} {float(budget['value']):.4g}",
            "sidbench.settings": settings_hash(cfg), "sidbench.config_hash": settings_hash(cfg, with_seed=True),
            # EDM's Heun sampler: two evaluations a step but one in the last (to sigma 0)
            "teacher_nfe": str(2 * int(cfg.dataset.teacher.sampler_steps) - 1)}
    extra = cfg.tracking.get("tags")
    # `tracking.tags.sidbench.bench=x` arrives nested; MLflow's tag is the dotted key
    return {**tags, **(flatten(OmegaConf.to_container(extra, resolve=True)) if extra else {})}


def code_version() -> str:
    """Git commit of the code that runs (with '+dirty' for local changes), or the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"sidbench-{version('sidbench')}"
        except PackageNotFoundError:  # run from a source tree that was neither cloned nor installed
            return "unknown"


class NullTracker:
    """Stands in on ranks other than 0 and when tracking is off."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


def _locked(e: BaseException) -> bool:
    return "database is locked" in str(e)


def retry_locked(fn: Callable[[], Any], attempts: int = 8, wait_s: float = 0.5) -> Any:
    """Call `fn`, again after a pause while SQLite reports its one writer busy (parallel bench cells
    on the default store); Python's sqlite3 waits only 5 s for the lock before giving up."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # MLflow wraps the OperationalError in its own exception types
            if not _locked(e) or i == attempts - 1:
                raise
            time.sleep(wait_s * (i + 1))
    raise AssertionError("unreachable")


def all_pages(call: Callable[..., Any], **kwargs: Any) -> list[Any]:
    """Every result of an MLflow search (`client.search_runs`, `client.search_experiments`), page
    by page: one call returns at most a page, however large `max_results` is asked to be."""
    out, token = [], None
    while True:
        page = retry_locked(lambda: call(page_token=token, **kwargs))
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


class TrackingStoreError(InputError):
    """The MLflow store cannot be created, read or written; the message names it and what to do."""


def _store_failure(e: BaseException) -> bool:
    """An error of the store (MLflow's, its database's, the file system's), not of our code."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "sqlite3", "alembic")


def store_call(uri: str, fn: Callable[[], Any]) -> Any:
    """`retry_locked(fn)`, with a failure of the store itself as one line naming it."""
    try:
        return retry_locked(fn)
    except Exception as e:
        if not _store_failure(e):
            raise
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise TrackingStoreError(f"the MLflow store {uri} failed ({reason}); make it writable, or point tracking.uri "
                                 "(or MLFLOW_TRACKING_URI) at a store you can write, or set tracking.enabled=false") from None


_OPENED: set[str] = set()


def open_store(uri: str) -> Any:
    """An MlflowClient of `uri`, the store created (and its schema migrated) first. For a SQLite
    file that happens under a file lock: processes that open a new store at once (parallel runs,
    bench cells, trials) would otherwise race MLflow's migration."""
    from mlflow.tracking import MlflowClient

    if uri in _OPENED:
        return MlflowClient(tracking_uri=uri)

    def first_use() -> Any:  # MLflow creates and migrates a SQL store when it first opens it
        c = store_call(uri, lambda: MlflowClient(tracking_uri=uri))
        store_call(uri, lambda: c.search_experiments(max_results=1))
        return c

    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(db) + ".lock")
            lock.acquire()
        except OSError as e:
            raise TrackingStoreError(f"the MLflow store {uri} cannot be created ({e.strerror or e}); point tracking.uri "
                                     "(or MLFLOW_TRACKING_URI) at a folder you can write") from None
        try:
            c = first_use()
        finally:
            lock.release()
    else:
        c = first_use()
    _OPENED.add(uri)
    return c


class MLflowTracker(NullTracker):
    def __init__(self, uri: str, experiment: str, artifact_root: Path, run_name: str | None = None, run_id: str | None = None) -> None:
        self.client = open_store(uri)
        self.uri = uri
        if run_id is None:
            exp_id = ensure_experiment(uri, experiment, artifact_root)
            run = self._call(lambda: self.client.create_run(exp_id, run_name=run_name))
            self.run_id = run.info.run_id
        else:
            self.run_id = run_id
            self._call(lambda: self.client.update_run(run_id, status="RUNNING"))

    def _call(self, fn: Callable[[], Any]) -> Any:
        return store_call(self.uri, fn)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._call(lambda batch=items[i : i + 100]: self.client.log_batch(self.run_id, params=batch))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self._call(lambda: self.client.log_batch(self.run_id, tags=items))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if items:
            self._call(lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path=subdir))

    def finish(self, status: str = "FINISHED") -> None:
        self._call(lambda: self.client.set_terminated(self.run_id, status=status))


def close_abandoned_run(uri: str, run_id: str) -> None:
    """Mark a run KILLED if it is still RUNNING: its process died before it could say so (a run
    begun again in its folder starts a new MLflow run; the leaderboard reads only FINISHED ones)."""
    c = open_store(uri)
    try:
        run = store_call(uri, lambda: c.get_run(run_id))
    except TrackingStoreError:
        return  # not in this store (the user pointed the run at another one): nothing to close
    if run.info.status == "RUNNING":
        store_call(uri, lambda: c.set_terminated(run_id, status="KILLED"))


def start_tracker(cfg: DictConfig, run_dir: Path, tags: dict[str, str], run_id: str | None, rank: int = 0) -> NullTracker:
    """The run's tracker: a new MLflow run, or the existing one when resuming."""
    if rank != 0 or not cfg.tracking.enabled:
        return NullTracker()
    uri = tracking_uri(cfg)
    tracker = MLflowTracker(uri, experiment=str(cfg.dataset.name), artifact_root=Path(cfg.output_root) / "mlartifacts",
                            run_name=run_dir.name, run_id=run_id)
    if run_id is None:
        tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        tracker.set_tags({**tags, "sidbench.run_dir": str(run_dir.resolve())})
    return tracker


def ensure_experiment(uri: str, name: str, artifact_root: Path) -> str:
    """The id of experiment `name`, created if missing (artifacts beside a SQLite store), with
    EXPERIMENT_TAGS (also added to an experiment made before they existed)."""
    c = open_store(uri)
    exp = store_call(uri, lambda: c.get_experiment_by_name(name))
    if exp is None:
        # Artifacts beside the SQLite store, not in whatever folder the user ran from.
        location = artifact_root.resolve().as_uri() if uri.startswith("sqlite:") else None
        try:
            return store_call(uri, lambda: c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS))
        except TrackingStoreError:
            exp = store_call(uri, lambda: c.get_experiment_by_name(name))  # another process made it meanwhile
            if exp is None:
                raise
    add_experiment_tags(c, exp)
    return exp.experiment_id


def add_experiment_tags(client: Any, exp: Any) -> None:  # an MlflowClient, an mlflow Experiment
    """Give an experiment made before EXPERIMENT_TAGS existed the ones it lacks (a kind someone set stays)."""
    for key, value in EXPERIMENT_TAGS.items():
        if key not in exp.tags:
            retry_locked(lambda key=key, value=value: client.set_experiment_tag(exp.experiment_id, key, value))


def find_run_dir(run_id: str, uri: str) -> Path:
    """The run folder that an MLflow run id was logged from (for `resume=<run id>`)."""
    run = open_store(uri).get_run(run_id)
    path = run.data.tags.get("sidbench.run_dir")
    if not path:
        raise ValueError(f"MLflow run {run_id} has no sidbench.run_dir tag; pass resume=<run dir> instead")
    return Path(path)
