"""Precision and recall (Kynkaanniemi et al. 2019, arXiv 1904.06991) with k = 3 (docs/metrics.md).

Each set of features spans a manifold: the union of balls around its points, each ball's radius the
distance from its point to the point's k-th nearest neighbour in the same set (the point itself not
counted). Precision is the fraction of generated points inside the real manifold (how many samples
look real); recall the fraction of real points inside the generated manifold (how much of the data
the generator covers). A point on a ball's boundary is inside (distance <= radius), as in the
authors' code. Both are better when higher.

Distances are Euclidean, in float32, computed block by block (`block` rows against `block` columns)
so that 50,000 x 50,000 pairs never sit in memory at once; StyleGAN2-ADA's implementation rounds
features and radii to float16, which can move a point that lies within that rounding of a boundary.
The features are VGG16's (`sidbench.eval.vgg16`); the real ones come from the dataset's reference
file (`sidbench stats --metric precision_recall`, `sidbench.eval.metric_refs`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
from omegaconf import DictConfig

from sidbench.errors import InputError
from sidbench.eval import register_metric
from sidbench.eval.base import Metric
from sidbench.eval.metric_refs import ReferenceFile
from sidbench.eval.protocol import PROTOCOL_NUM_IMAGES
from sidbench.eval.sources import FeatureExtractor, as_rgb

NAME = "precision_recall"
#: Neighbourhood size of the paper's and StyleGAN2-ADA's `pr50k3`.
K = 3
#: Rows (and columns) of one block of pairwise distances: 4096^2 float32 = 64 MiB.
BLOCK = 4096


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=torch.float32)


def manifold_radii(features: np.ndarray | torch.Tensor, k: int = K, *, block: int = BLOCK,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The distance from each point [N, D] to its k-th nearest other point, [N] (float32).

    A point's distance to itself (0) is the smallest of its row, so the k-th neighbour is the
    (k + 1)-th smallest; the k + 1 smallest are kept across column blocks."""
    f = _as_tensor(features, device)
    if f.ndim != 2 or f.shape[0] < k + 1:
        raise InputError(f"precision/recall with k={k} needs at least {k + 1} points [N, D], got {list(f.shape)}")
    radii = []
    for rows in f.split(block):
        nearest = torch.full((rows.shape[0], 0), float("inf"), device=f.device)
        for cols in f.split(block):
            d = torch.cdist(rows.unsqueeze(0), cols.unsqueeze(0))[0]
            nearest = torch.cat([nearest, d], dim=1).topk(min(k + 1, nearest.shape[1] + d.shape[1]), dim=1,
                                                          largest=False).values
        radii.append(nearest[:, k])
    return torch.cat(radii)


def inside(probes: np.ndarray | torch.Tensor, manifold: np.ndarray | torch.Tensor, radii: torch.Tensor, *,
           block: int = BLOCK, device: torch.device | str | None = None) -> torch.Tensor:
    """For each probe [M, D]: is it within radii[i] of some manifold point i? [M] bool."""
    p, m = _as_tensor(probes, device), _as_tensor(manifold, device)
    r = radii.to(p.device)
    if p.shape[1] != m.shape[1]:
        raise InputError(f"feature dimensions differ: {p.shape[1]} generated vs {m.shape[1]} in the reference")
    out = []
    for rows in p.split(block):
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=p.device)
        for start in range(0, m.shape[0], block):
            d = torch.cdist(rows.unsqueeze(0), m[start:start + block].unsqueeze(0))[0]
            hit |= (d <= r[start:start + block]).any(dim=1)
        out.append(hit)
    return torch.cat(out)


def precision_recall(real: np.ndarray | torch.Tensor, generated: np.ndarray | torch.Tensor, k: int = K, *,
                     block: int = BLOCK, device: torch.device | str | None = None) -> tuple[float, float]:
    """(precision, recall) of generated features against real ones, both [N, D]."""
    real_radii = manifold_radii(real, k, block=block, device=device)
    gen_radii = manifold_radii(generated, k, block=block, device=device)
    precision = inside(generated, real, real_radii, block=block, device=device).float().mean().item()
    recall = inside(real, generated, gen_radii, block=block, device=device).float().mean().item()
    return precision, recall


@register_metric(NAME)
class PrecisionRecall(ReferenceFile, Metric):
    """Precision and recall (k = 3) of a uint8 image stream against the dataset's VGG16 features: an
    `.npz` written by `sidbench stats --metric precision_recall`, or an array [N, D] in memory.

    `feature_extractor` replaces VGG16 (any callable uint8 [B, 3, H, W] -> [B, D]); otherwise the
    weights come from `weights_path`, else `$SIDBENCH_VGG16`, else the download cache, loaded on
    first use. Logs two values, `eval/precision` and `eval/recall`.
    """

    description = "precision and recall (k=3) of VGG16 features against the dataset's (sidbench stats --metric precision_recall)"
    title = "precision / recall"
    value_names = ("precision", "recall")
    higher_is_better = frozenset({"precision", "recall"})

    def __init__(self, reference: str | os.PathLike | np.ndarray, *, k: int = K,
                 weights_path: str | os.PathLike | None = None, feature_extractor: FeatureExtractor | None = None,
                 device: torch.device | str | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = False, block: int = BLOCK) -> None:
        if isinstance(reference, (np.ndarray, torch.Tensor)):
            self._real: np.ndarray | None = np.asarray(reference, dtype=np.float32)
            self.reference = "features given in memory"
        else:
            self._real = None
            self.reference = os.fspath(reference)
        self.k = int(k)
        self.weights_path = weights_path
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress
        self.block = block
        self._extractor = feature_extractor
        self.num_images = 0

    @classmethod
    def from_config(cls, cfg: DictConfig, *, device: torch.device | str | None = None,
                    progress: bool = True) -> PrecisionRecall:
        """Against the dataset's features (`eval.refs.precision_recall`, else the default file), with
        the weights of `eval.vgg16_path` (else `$SIDBENCH_VGG16`, else the cache)."""
        from sidbench.eval.metric_refs import require_reference

        metric = cls(require_reference(cfg, NAME), weights_path=cfg.eval.get("vgg16_path"), device=device,
                     progress=progress)
        metric.reference_features  # noqa: B018 - read and validated now
        return metric

    def details(self) -> list[tuple[str, str]]:
        rows = [("reference", self.reference), ("k", str(self.k))]
        if self._real is not None:
            rows.append(("reference images", f"{len(self._real):,}"))
        return rows

    def caveats(self, num_images: int) -> list[str]:
        notes = []
        if num_images < PROTOCOL_NUM_IMAGES:
            notes.append(f"{num_images:,} generated images; the paper and StyleGAN2-ADA's pr50k3 use {PROTOCOL_NUM_IMAGES:,}")
        notes.append("VGG16 with torchvision's ImageNet weights, not NVIDIA's vgg16.pt: compare only with sidbench's own "
                     "precision and recall")
        return notes

    @property
    def reference_features(self) -> np.ndarray:
        if self._real is None:
            from sidbench.eval.metric_refs import load_features

            self._real = load_features(self.reference, NAME)
        if len(self._real) < self.k + 1:
            raise InputError(f"{self.reference} holds {len(self._real)} reference points; k={self.k} needs at least {self.k + 1}")
        return self._real

    @property
    def feature_extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            from sidbench.eval.vgg16 import vgg16_extractor

            self._extractor = vgg16_extractor(self.weights_path, device=self.device, cache_dir=self.cache_dir,
                                              progress=self.progress)
        return self._extractor

    def features(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        """VGG16 features [N, D] (float32) of a uint8 stream (grayscale repeated to RGB)."""
        out = []
        for batch in batches:
            f = self.feature_extractor(as_rgb(batch))
            out.append(f.detach().float().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, np.float32))
        if not out:
            raise InputError(f"{self.name}: no images to score")
        return np.concatenate(out).astype(np.float32, copy=False)

    def compute(self, batches: Iterable[torch.Tensor]) -> float:
        raise TypeError("precision_recall gives two values (precision, recall): call compute_values")

    def compute_values(self, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        real = self.reference_features  # a bad reference fails before any time goes into features
        gen = self.features(batches)
        self.num_images = len(gen)
        device = self.device if self.device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        p, r = precision_recall(real, gen, self.k, block=self.block, device=device)
        return {"precision": p, "recall": r}
