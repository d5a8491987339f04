"""The offline distances of the `digits` default: Frechet distances to the 1797 real 8x8 digits.

Neither is FID (no Inception network, no 299x299 resize); they are named for what they are:

* `fd_pixel`  (`FDPixel`):  Frechet distance between pixel vectors (64-dim).
* `fd_digits` (`FDDigits`): Frechet distance in the penultimate features of a tiny CNN classifier
  trained on digits and shipped beside this module (see `digits_classifier`).

Both consume the uint8 batches every metric consumes and map them back with `x / 127.5 - 1`. The
reference is all 1797 real digits passed through the *same* path (`to_uint8`, then back), so the
real data scores exactly 0 against itself, and a perfect generator scores the sampling floor that
`python -m sidbench.eval.digits_floor` measures (recorded in `assets/digits_floor.json`).
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from sidbench.eval import register_metric
from sidbench.eval.base import Metric
from sidbench.eval.digits_classifier import (
    DIGITS_SHAPE,
    classifier_features,
    load_digits_classifier,
    real_digits_uint8,
    uint8_to_float,
)
from sidbench.eval.frechet import feature_statistics, frechet_distance
from sidbench.eval.images import to_uint8
from sidbench.errors import InputError


def _one_channel(x: object) -> object:
    """Gray images stored as RGB (image files are read as RGB, grayscale repeated) back to one channel."""
    if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == 3 and torch.equal(x, x[:, :1].expand_as(x)):
        return x[:, :1]
    return x


class DigitsFrechet(Metric):
    """Frechet distance between features of generated digits and of the real digits.

    Subclasses define `_features` (uint8 [B, 1, 8, 8] -> float features [B, D]). The reference
    statistics are computed once, on first use, and cached in the object.

    `real`: the reference images, float [N, 1, 8, 8] in [-1, 1] (default: all 1797 scikit-learn
    digits); they go through `to_uint8` like generated images do.
    """

    def __init__(self, real: torch.Tensor | None = None):
        if real is None:
            self._real = real_digits_uint8()[0]
        else:
            self._real = to_uint8(real.detach().float().cpu())
            self._check(self._real)
        self._reference: tuple[np.ndarray, np.ndarray] | None = None

    @abstractmethod
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """Features [B, D] of uint8 images [B, 1, 8, 8] (already validated)."""

    def _check(self, x: object) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: expected uint8 image batches (torch.Tensor), got {type(x).__name__}")
        if x.dtype != torch.uint8:
            raise TypeError(
                f"{self.name}: expected uint8 images [B, 1, 8, 8] (see sidbench.eval.images.to_uint8), got dtype {x.dtype}"
            )
        if x.ndim != 4 or tuple(x.shape[1:]) != DIGITS_SHAPE:
            raise ValueError(
                f"{self.name}: expected digits images [B, 1, 8, 8] (1 channel, 8x8), got shape {list(x.shape)}"
            )

    def features(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        """Features [N, D] (float64) of every image in `batches`, validating each batch."""
        out = []
        for batch in batches:
            batch = _one_channel(batch)
            self._check(batch)
            out.append(self._features(batch.cpu()).detach().double().numpy())
        if not out:
            raise InputError(f"{self.name}: no images to score")
        return np.concatenate(out)

    @property
    def reference_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance) of the real digits' features, float64; computed once."""
        if self._reference is None:
            self._reference = feature_statistics(self.features([self._real]))
        return self._reference

    def distance(self, features: np.ndarray) -> float:
        """Frechet distance of features [N >= 2, D] to the reference."""
        if len(features) < 2:
            raise InputError(f"{self.name}: need at least 2 images, got {len(features)}")
        mu, sigma = feature_statistics(features)
        return frechet_distance(mu, sigma, *self.reference_statistics)

    def compute(self, batches: Iterable[torch.Tensor]) -> float:
        return self.distance(self.features(batches))


@register_metric("fd_pixel")
class FDPixel(DigitsFrechet):
    """Frechet distance in pixel space: 64-dim vectors of `x / 127.5 - 1`.

    The real covariance is singular (border pixels never change); `frechet_distance` is
    eigenvalue-based and handles it.
    """

    description = "Frechet distance of pixel vectors to the 1797 scikit-learn digits (offline; not FID)"
    reference = "the 1797 scikit-learn digits (pixel space; not FID)"

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return uint8_to_float(images).flatten(1)


@register_metric("fd_digits")
class FDDigits(DigitsFrechet):
    """Frechet distance in the penultimate features of the shipped digits classifier.

    `weights`: a classifier file (default: `assets/digits_classifier.safetensors`).
    """

    description = "Frechet distance of the shipped digits classifier's features to the 1797 digits (offline; not FID)"
    reference = "the 1797 scikit-learn digits (digits-classifier features; not FID)"

    def __init__(self, real: torch.Tensor | None = None, weights: str | Path | None = None):
        self.classifier = load_digits_classifier(weights)
        super().__init__(real)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return classifier_features(self.classifier, images)

