"""Metrics by name, built from the run config: the one way every metric (FID included) is made,
for a run's evaluations and for `sidbench fid` alike; and which metrics a run measures."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from sidbench.eval import METRICS

if TYPE_CHECKING:
    from sidbench.eval.base import Metric

__all__ = ["build_metric", "build_metrics", "check_run_metrics", "final_only_metric_names", "run_metric_names"]


def build_metric(name: str, cfg: DictConfig, **options: Any) -> Metric:
    """`METRICS.get(name).from_config(cfg, **options)`: `cfg` is the whole run config (the dataset
    card and the eval group); `options` are `from_config`'s (`device`, `progress`)."""
    return METRICS.get(name).from_config(cfg, **options)


def build_metrics(names: list[str], cfg: DictConfig, **options: Any) -> list[Metric]:
    return [build_metric(name, cfg, **options) for name in names]


def run_metric_names(cfg: DictConfig) -> list[str]:
    """The metrics of every evaluation: the headline `eval.metric` first, then `eval.metrics`
    (a name given twice counts once). A config without `eval.metrics` measures the headline alone."""
    return list(dict.fromkeys([str(cfg.eval.metric), *(str(m) for m in cfg.eval.get("metrics") or [])]))


def final_only_metric_names(cfg: DictConfig) -> list[str]:
    """`eval.final_metrics` that are not measured at every evaluation already: measured at the end only."""
    every = run_metric_names(cfg)
    return [m for m in dict.fromkeys(str(m) for m in cfg.eval.get("final_metrics") or []) if m not in every]


def check_run_metrics(cfg: DictConfig) -> None:
    """The headline metric gives one value, lower is better (budgets' points, the teacher's line and
    the leaderboard's ranking read it); no two metrics log a value under the same name; each metric
    accepts the config (`Metric.check_config`: its reference exists). One ConfigError line otherwise."""
    from sidbench.config import ConfigError

    headline = str(cfg.eval.metric)
    cls = METRICS.get(headline)
    if cls.values() != (headline,) or headline in cls.higher_is_better:
        what = (f"gives {len(cls.values())} values ({', '.join(cls.values())})" if cls.values() != (headline,)
                else "is better when higher")
        raise ConfigError(f"eval.metric={headline} {what}; the headline metric must be one distance (lower is better): "
                          f"keep eval.metric={cfg.dataset.get('metric', 'fid')} and add {headline} to eval.metrics")
    seen: dict[str, str] = {}
    for name in [*run_metric_names(cfg), *final_only_metric_names(cfg)]:
        METRICS.get(name).check_config(cfg)
        for value in METRICS.get(name).values():
            if value in seen and seen[value] != name:
                raise ConfigError(f"metrics {seen[value]} and {name} both log eval/{value}; measure only one of them")
            seen[value] = name
