"""The metric contract: every distance (offline digits distances, FID) is one implementation of it.

A metric consumes a stream of uint8 image batches (NCHW, values 0..255, native resolution) and
returns one number. It knows its own reference (real statistics), so the trainer and the CLI can
treat `fd_pixel` on digits and `fid` on FFHQ the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch


class Metric(ABC):
    """A distance between generated images and a fixed reference; lower is better."""

    #: Name used in logs and MLflow keys (`eval/<name>`). Never call a non-Inception distance "fid".
    name: str = "metric"

    @abstractmethod
    def compute(self, batches: Iterable[torch.Tensor]) -> float:
        """Distance of the images in `batches` (uint8 tensors [B, C, H, W]) to the reference."""
