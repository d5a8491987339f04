"""Class labels for conditional generation, drawn from the dataset's label frequencies."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch


def label_frequencies(label_dim: int, spec: str | Sequence[float] | None, dataset: Mapping) -> torch.Tensor:
    """`uniform`, `data` or a list of `label_dim` non-negative weights; `dataset` is the dataset card.

    `data` counts the classes of the card's own images: those it ships (`images.builtin`; the
    scikit-learn digits are the bundled ones) rather than a name, so a new card says it in its fields."""
    if spec is None or spec == "uniform":
        return torch.full((label_dim,), 1.0 / label_dim)
    if spec == "data":
        images = dataset.get("images") or {}
        if images.get("builtin") != "digits":
            raise ValueError(f"label_freq=data counts the labels of the card's bundled images (images.builtin), which "
                             f"dataset {dataset.get('name')} has not; give its label frequencies as a list of {label_dim} numbers")
        from sidbench.data.digits import load_digits_tensors

        counts = torch.bincount(load_digits_tensors()[1], minlength=label_dim).double()
        return (counts / counts.sum()).float()
    freq = torch.as_tensor(list(spec), dtype=torch.float64)
    if freq.shape != (label_dim,) or (freq < 0).any() or freq.sum() <= 0:
        raise ValueError(f"label_freq must hold {label_dim} non-negative numbers, got {list(spec)}")
    return (freq / freq.sum()).float()


def label_sampler(label_dim: int, freq: torch.Tensor, device: torch.device) -> Callable[[int], torch.Tensor | None]:
    """n -> one-hot labels [n, label_dim] on `device` (None for unconditional data)."""
    if label_dim == 0:
        return lambda n: None
    freq = freq.to(device)

    def draw(n: int) -> torch.Tensor:
        classes = torch.multinomial(freq, n, replacement=True)
        return torch.nn.functional.one_hot(classes, label_dim).float()

    return draw
