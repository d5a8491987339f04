"""The references of the metrics beyond FID: one file per dataset and metric, made by `sidbench stats`.

FID's reference is the dataset card's `ref_stats` (EDM's published statistics). FD-DINOv2 and
precision/recall have none published for these datasets, so `sidbench stats <images> --metric <m>
dataset=<d>` computes one from the dataset's images and writes it where a run looks for it:
`eval.refs.<metric>` when set, else `<cache>/refs/<dataset>-<metric>.npz` (the cache of
`sidbench.download`). A run that asks for a metric without its reference stops before training,
with one line saying how to make it.

Files: FD-DINOv2 keeps statistics (`mu`, `sigma`, `metric`; `sidbench.eval.reference`); precision
and recall keep the features themselves (`features` [N, D] float32, `metric`), since its manifolds
are built from every reference point.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from sidbench.atomic import atomic_path
from sidbench.errors import InputError, MissingInputError


def default_reference_path(dataset: str, metric: str) -> Path:
    """Where `sidbench stats --metric <metric> dataset=<dataset>` writes, and a run looks, by default."""
    from sidbench.download import default_cache_dir

    return default_cache_dir() / "refs" / f"{dataset}-{metric}.npz"


def configured_reference(cfg: DictConfig, metric: str) -> Path:
    """`eval.refs.<metric>` when set, else the default place for the run's dataset."""
    refs = cfg.eval.get("refs") or {}
    given = refs.get(metric)
    return Path(str(given)).expanduser() if given else default_reference_path(str(cfg.dataset.name), metric)


def require_reference(cfg: DictConfig, metric: str) -> Path:
    """The reference file of `metric` for the run's dataset; a missing one is a one-line ConfigError
    with the command that makes it."""
    from sidbench.config import ConfigError

    path = configured_reference(cfg, metric)
    if path.is_file():
        return path
    images = (cfg.dataset.get("images") or {}).get("path") or "<the dataset's images: folder, zip or .npz>"
    make = f"sidbench stats {images} --metric {metric} dataset={cfg.dataset.name}"
    if (cfg.eval.get("refs") or {}).get(metric):
        raise ConfigError(f"eval.refs.{metric}={cfg.eval.refs[metric]}: no such file; make it with `{make} --out {path}`")
    raise ConfigError(f"eval.refs.{metric}=null: no {metric} reference for dataset {cfg.dataset.name} at {path} (the "
                      f"default); make it with `{make}`, or set eval.refs.{metric}=<file>")


def save_features(path: str | os.PathLike, features: np.ndarray, metric: str) -> Path:
    """Write reference features [N, D] (float32) for `metric`; `.npz` is appended when missing."""
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 2 or not np.isfinite(f).all():
        raise ValueError(f"reference features must be finite [N, D], got shape {f.shape}")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        np.savez(out, features=f, metric=np.array(metric))
    return path


def load_features(path: str | os.PathLike, metric: str) -> np.ndarray:
    """Reference features [N, D] float32 written by `save_features` for `metric`; one line when not."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{metric} reference features not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "features" not in data.files:
                raise InputError(f"{path} holds no 'features' (it has {sorted(data.files)}); make it with "
                                 f"`sidbench stats <images> --metric {metric}`")
            holds = str(data["metric"]) if "metric" in data.files else "?"
            features = data["features"]
    except (OSError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"cannot read {path} as .npz: {' '.join(str(err).split())}") from None
    if holds != metric:
        raise InputError(f"{path} holds {holds} features, not {metric}'s")
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating) or not np.isfinite(features).all():
        raise InputError(f"{path}: 'features' must be finite floats [N, D], got {features.dtype} {list(features.shape)}")
    return features.astype(np.float32, copy=False)


class ReferenceFile:
    """A metric's settings check and recorded settings when it compares with a reference file named
    by the dataset's `eval.refs.<metric name>` (else the cached default): mixed in before `Metric`
    by FD-DINOv2 and precision/recall, whose `name` is set by `@register_metric`."""

    name: str

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        require_reference(cfg, cls.name)

    @classmethod
    def measurement_settings(cls, cfg: DictConfig) -> dict[str, str]:
        return {"ref": str(configured_reference(cfg, cls.name))}
