"""FD-DINOv2 (Stein et al. 2023, arXiv 2306.04675; as EDM2 reports it): the Frechet distance between
DINOv2 ViT-L/14 features of generated images and of the dataset's images (docs/metrics.md).

The features are `sidbench.eval.dinov2`'s (EDM2's preprocessing, the published backbone loaded as
tensors only); the statistics float64 with covariance n - 1, the distance `frechet_distance`, as
FID. The reference statistics are the dataset's, made by `sidbench stats --metric fd_dinov2`
(`sidbench.eval.metric_refs`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
from omegaconf import DictConfig

from sidbench.eval import register_metric
from sidbench.eval.base import Metric
from sidbench.eval.frechet import frechet_distance
from sidbench.eval.metric_refs import ReferenceFile
from sidbench.eval.protocol import PROTOCOL_NUM_IMAGES
from sidbench.eval.reference import load_reference_stats, validate_stats
from sidbench.eval.sources import FeatureExtractor, accumulate_features

NAME = "fd_dinov2"


@register_metric(NAME)
class FDDINOv2(ReferenceFile, Metric):
    """FD-DINOv2 of a uint8 image stream against reference statistics: an `.npz` written by
    `sidbench stats --metric fd_dinov2`, or `(mu, sigma)` in memory.

    `feature_extractor` replaces the DINOv2 backbone (any callable uint8 [B, 3, H, W] -> [B, D]);
    otherwise the weights come from `weights_path`, else `$SIDBENCH_DINOV2`, else the download cache,
    loaded on first use. `num_images` holds the size of the last scored set.
    """

    description = "FD-DINOv2: DINOv2 ViT-L/14 features against the dataset's statistics (sidbench stats --metric fd_dinov2)"
    title = "FD-DINOv2"

    def __init__(self, reference: str | os.PathLike | tuple[np.ndarray, np.ndarray], *,
                 weights_path: str | os.PathLike | None = None, feature_extractor: FeatureExtractor | None = None,
                 device: torch.device | str | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = False) -> None:
        if isinstance(reference, (tuple, list)):
            mu, sigma = (np.asarray(a, np.float64) for a in reference)
            validate_stats(mu, sigma, "<reference given in memory>")
            self._stats: tuple[np.ndarray, np.ndarray] | None = (mu, sigma)
            self.reference = "statistics given in memory"
        else:
            self._stats = None
            self.reference = os.fspath(reference)
        self.weights_path = weights_path
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress
        self._extractor = feature_extractor
        self.num_images = 0

    @classmethod
    def from_config(cls, cfg: DictConfig, *, device: torch.device | str | None = None, progress: bool = True) -> FDDINOv2:
        """Against the dataset's statistics (`eval.refs.fd_dinov2`, else the default file), with the
        weights of `eval.dinov2_path` (else `$SIDBENCH_DINOV2`, else the cache); the reference is
        read here, so a missing one fails before any image is made."""
        from sidbench.eval.metric_refs import require_reference

        metric = cls(require_reference(cfg, NAME), weights_path=cfg.eval.get("dinov2_path"), device=device,
                     progress=progress)
        metric.reference_stats  # noqa: B018 - read and validated now
        return metric

    def caveats(self, num_images: int) -> list[str]:
        if num_images < PROTOCOL_NUM_IMAGES:
            return [f"{num_images:,} images; EDM2 uses {PROTOCOL_NUM_IMAGES:,} (a Frechet distance is biased upwards on "
                    "smaller sets)"]
        return []

    @property
    def reference_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stats is None:
            self._stats = load_reference_stats(self.reference, NAME)
        return self._stats

    @property
    def feature_extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            from sidbench.eval.dinov2 import dinov2_extractor

            self._extractor = dinov2_extractor(self.weights_path, device=self.device, cache_dir=self.cache_dir,
                                               progress=self.progress)
        return self._extractor

    def compute(self, batches: Iterable[torch.Tensor]) -> float:
        ref_mu, ref_sigma = self.reference_stats  # a bad reference fails before any time goes into features
        stats = accumulate_features(batches, self.feature_extractor)
        self.num_images = stats.n
        if stats.mu.shape != ref_mu.shape:
            raise ValueError(f"feature dimension {stats.mu.shape[0]} differs from the reference statistics' "
                             f"{ref_mu.shape[0]} ({self.reference})")
        return frechet_distance(stats.mu, stats.sigma, ref_mu, ref_sigma)
