"""MLflow logging: one experiment per dataset, one run per training run, metrics against kimg.

The default store is a local SQLite file (no server); `MLFLOW_TRACKING_URI` or `tracking.uri`
overrides it. Only rank 0 logs; other ranks get a `NullTracker`.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


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


class MLflowTracker(NullTracker):
    def __init__(self, uri: str, experiment: str, artifact_root: Path, run_name: str | None = None, run_id: str | None = None) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                # Artifacts beside the SQLite store, not in whatever folder the user ran from.
                location = artifact_root.resolve().as_uri() if uri.startswith("sqlite:") else None
                exp_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            run = self.client.create_run(exp_id, run_name=run_name)
            self.run_id = run.info.run_id
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=subdir)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


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


def find_run_dir(run_id: str, uri: str) -> Path:
    """The run folder that an MLflow run id was logged from (for `resume=<run id>`)."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    path = run.data.tags.get("sidbench.run_dir")
    if not path:
        raise ValueError(f"MLflow run {run_id} has no sidbench.run_dir tag; pass resume=<run dir> instead")
    return Path(path)
