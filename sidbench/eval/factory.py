"""A metric by name, built from the run config: the one way every metric (FID included) is made,
for a run's evaluations and for `sidbench fid` alike."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from sidbench.eval import METRICS

if TYPE_CHECKING:
    from sidbench.eval.base import Metric

__all__ = ["build_metric"]


def build_metric(name: str, cfg: DictConfig, **options: Any) -> Metric:
    """`METRICS.get(name).from_config(cfg, **options)`: `cfg` is the whole run config (the dataset
    card and the eval group); `options` are `from_config`'s (`device`, `progress`)."""
    return METRICS.get(name).from_config(cfg, **options)
