"""The metric contract: every distance (offline digits distances, FID) is one implementation of it.

A metric consumes a stream of uint8 image batches (NCHW, values 0..255, native resolution) and
returns one number (`compute`), or several named ones (`compute_values`: precision and recall come
from one pass over the images). It states on its class everything the rest of sidbench needs to know about
it, so the trainer, `sidbench fid` and the teacher's measurements treat `fd_pixel` on digits and
`fid` on FFHQ the same way:

* its name (`@register_metric("name")`, `sidbench.eval`), the key it is logged under;
* its reference (`reference`): what it compares with, which an offline metric carries itself
  (FID's is the dataset card's `ref_stats`);
* how it is built from the run config (`from_config`);
* which of the run's settings change its value besides the images (`measurement_settings`: a
  teacher's measurement is recorded and found under them);
* how a value is shown (`title`, `details`) and what its reader should be told (`caveats`);
* the values it gives (`value_names`: logged as `eval/<value>`) and which of them are better when
  higher (`higher_is_better`); a run's headline metric (`eval.metric`) gives one value, lower better.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
from omegaconf import DictConfig


class Metric(ABC):
    """A distance between generated images and a fixed reference; lower is better."""

    #: Name used in logs and MLflow keys (`eval/<name>`); set by `@register_metric(name)`. Never
    #: call a non-Inception distance "fid".
    name: str = "metric"
    #: One line for `sidbench list`; defaults to the docstring's first line.
    description: str = ""
    #: What the images are compared with, shown by `sidbench fid`. A metric that carries its
    #: reference itself (and so works offline) says so here; FID names the statistics it was given.
    reference: str = ""
    #: The heading of its value in printouts; empty: the name.
    title: str = ""
    #: The names of the values `compute_values` returns, each logged as `eval/<value name>`; empty:
    #: one value named as the metric.
    value_names: tuple[str, ...] = ()
    #: The value names that are better when higher (precision, recall); every other is a distance.
    higher_is_better: frozenset[str] = frozenset()

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The names of the values this metric gives (`eval/<name>` each): `value_names`, else its name."""
        return tuple(cls.value_names) or (cls.name,)

    @classmethod
    def from_config(cls, cfg: DictConfig, *, device: torch.device | str | None = None, progress: bool = False) -> Metric:
        """The metric of a run: `cfg` is the whole run config (the dataset card and the eval group);
        `device` where any network of the metric runs (None: its own choice); `progress` shows
        downloads. The default takes no settings."""
        return cls()

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Refuse, with one ConfigError line, a run config this metric cannot be built from (e.g. a
        missing reference file), cheaply: the run is checked before anything starts. Default: none."""

    @classmethod
    def measurement_settings(cls, cfg: DictConfig) -> dict[str, str]:
        """The run's settings that change this metric's value for the same images (FID: its mode
        and reference statistics), as MLflow tags of a teacher's measurement; {} for none."""
        return {}

    def details(self) -> list[tuple[str, str]]:
        """(what, value) rows that say what a value was measured against, for `sidbench fid`'s table."""
        return [("reference", self.reference)] if self.reference else []

    def caveats(self, num_images: int) -> list[str]:
        """Notes for whoever reads a value computed on `num_images` images (e.g. too few)."""
        return []

    @abstractmethod
    def compute(self, batches: Iterable[torch.Tensor]) -> float:
        """Distance of the images in `batches` (uint8 tensors [B, C, H, W]) to the reference. A
        metric of several values (`value_names`) implements `compute_values` and raises here."""

    def compute_values(self, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        """{value name: value} of the images in `batches`, in the order of `values()`; one value by
        default, `compute`'s."""
        return {self.name: float(self.compute(batches))}
