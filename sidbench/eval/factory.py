"""Metric by name: the offline digits distances and FID behind the one `Metric` interface."""
from __future__ import annotations

from omegaconf import DictConfig

from sidbench.eval.base import Metric
from sidbench.eval.protocol import METRIC_NAMES

__all__ = ["METRIC_NAMES", "build_metric"]


def build_metric(name: str, cfg: DictConfig) -> Metric:
    """`cfg` is the whole run config (the dataset card and the eval group)."""
    if name in ("fd_pixel", "fd_digits"):
        from sidbench.eval.digits import digits_metric

        return digits_metric(name)
    if name == "fid":
        from sidbench.eval.fid import FID
        from sidbench.eval.reference import reference_stats_for

        mu, sigma = reference_stats_for(cfg.dataset.ref_stats)
        return FID(mu, sigma, mode=cfg.eval.fid_mode, inception_path=cfg.eval.get("inception_path"))
    raise ValueError(f"unknown metric {name!r}; choose one of: {', '.join(METRIC_NAMES)}")
