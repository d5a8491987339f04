"""A tiny CNN classifier for scikit-learn's 8x8 digits: the feature extractor behind `fd_digits`.

It plays the role Inception plays for FID, at digits' scale: the Frechet distance is taken in its
penultimate (feature) layer. The shipped weights (`sidbench/assets/digits_classifier.safetensors`,
with a `.json` record of the command, seed, split, held-out accuracy and feature dimension) were
trained by `python -m sidbench.assets.train_digits_classifier`, which sits beside them.

The classifier sees exactly what every metric sees: images quantised by EDM's `to_uint8` and mapped
back to [-1, 1] with `x / 127.5 - 1` (`uint8_to_float`).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from sidbench.assets import ASSETS
from sidbench.data.digits import load_digits_tensors
from sidbench.data.image_files import uint8_to_float  # re-exported for digits.py and the asset scripts
from sidbench.eval.images import to_uint8

#: Channels, height, width of a digits image.
DIGITS_SHAPE = (1, 8, 8)
DEFAULT_WEIGHTS = ASSETS / "digits_classifier.safetensors"
TRAIN_COMMAND = "python -m sidbench.assets.train_digits_classifier"


@functools.lru_cache(maxsize=1)
def _real_digits_uint8() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_digits_tensors()
    return to_uint8(images), labels


def real_digits_uint8() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 real digits as the metrics see them: uint8 [1797, 1, 8, 8] via `to_uint8`, and labels.

    Loaded once per process; the caller gets its own copies.
    """
    images, labels = _real_digits_uint8()
    return images.clone(), labels.clone()


class DigitsClassifier(nn.Module):
    """conv3x3 x2 -> pool -> conv3x3 -> pool -> linear (features) -> ReLU -> linear (10 logits).

    Input: float images [B, 1, 8, 8] in [-1, 1]. `features` returns the penultimate layer, of width
    `feature_dim`, taken before its ReLU: post-ReLU, a sixth of the units were dead on the real
    digits (constant 0), which only adds exactly singular directions to the covariance.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 32), feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        c1, c2, c3 = channels
        self.channels = tuple(int(c) for c in channels)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3 * 2 * 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # 8x8 -> 4x4
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)  # 4x4 -> 2x2
        return self.fc(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


def classifier_config(model: DigitsClassifier) -> dict:
    return {"channels": list(model.channels), "feature_dim": model.feature_dim, "num_classes": model.num_classes}


def load_digits_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The classifier stored at `path` (default: the shipped weights), in eval mode, without gradients."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no digits classifier at {path}; train one with `{TRAIN_COMMAND} --out {path}`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    model = DigitsClassifier(**json.loads(meta.get("config", "{}")))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def classifier_features(model: DigitsClassifier, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate features [N, feature_dim] (float32) of uint8 images [N, 1, 8, 8]."""
    out = [model.features(uint8_to_float(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.feature_dim)
