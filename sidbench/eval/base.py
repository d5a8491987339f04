"""The metric contract: every distance (offline digits distances, FID) is one implementation of it.

A metric consumes a stream of uint8 image batches (NCHW, values 0..255, native resolution) and
returns one number. It states on its class everything the rest of sidbench needs to know about
it, so the trainer, `sidbench fid` and the teacher's measurements treat `fd_pixel` on digits and
`fid` on FFHQ the same way:

* its name (`@register_metric("name")`, `sidbench.eval`), the key it is logged under;
* its reference (`reference`): what it compares with, which an offline metric carries itself
  (FID's is the dataset card's `ref_stats`);
* how it is built from the run config (`from_config`);
* which of the run's settings change its value besides the images (`measurement_settings`: a
  teacher's measurement is recorded and found under them);
* how a value is shown (`title`, `details`) and what its reader should be told (`caveats`).
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

    @classmethod
    def from_config(cls, cfg: DictConfig, *, device: torch.device | str | None = None, progress: bool = False) -> Metric:
        """The metric of a run: `cfg` is the whole run config (the dataset card and the eval group);
        `device` where any network of the metric runs (None: its own choice); `progress` shows
        downloads. The default takes no settings."""
        return cls()

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
        """Distance of the images in `batches` (uint8 tensors [B, C, H, W]) to the reference."""
