"""scikit-learn's bundled digits (1797 images, 8x8, 10 classes): the offline default's data.

It ships inside scikit-learn, so a fresh machine without internet has it.
"""
from __future__ import annotations

import torch


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Images [1797, 1, 8, 8] float32 in [-1, 1] (pixels v/16*2-1) and int64 labels [1797]."""
    from sklearn.datasets import load_digits  # imported lazily: only the digits paths need it

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images / 16 * 2 - 1, labels
