"""Turning a generator into the uint8 image stream that every metric consumes."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

#: A generator callable: (z [B, C, H, W] standard normal, one-hot labels [B, L] or None) -> images in [-1, 1].
SampleFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """EDM's convention for FID: clip(x * 127.5 + 128, 0, 255), truncated to uint8."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def draw_labels(
    indices: torch.Tensor, label_dim: int, mode: str = "cyclic", generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """One-hot labels for sample indices: `i mod label_dim` ("cyclic") or uniform ("uniform")."""
    if label_dim == 0:
        return None
    if mode == "cyclic":
        classes = indices % label_dim
    elif mode == "uniform":
        classes = torch.randint(label_dim, indices.shape, generator=generator, device=indices.device)
    else:
        raise ValueError(f"unknown label mode {mode!r}; use 'cyclic' or 'uniform'")
    return torch.nn.functional.one_hot(classes, label_dim).float()


@torch.no_grad()
def generated_batches(
    sample_fn: SampleFn,
    num_samples: int,
    batch_size: int,
    shape: tuple[int, int, int],
    label_dim: int = 0,
    device: torch.device | str = "cpu",
    seed: int = 0,
    label_mode: str = "cyclic",
) -> Iterator[torch.Tensor]:
    """Yield `num_samples` generated images as uint8 batches [B, C, H, W] on the CPU.

    Noise and labels come from a private generator seeded with `seed`, so evaluation never
    disturbs the training RNG and the same seed always scores the same images.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        z = torch.randn((n, *shape), generator=gen).to(device)
        labels = draw_labels(torch.arange(start, start + n), label_dim, label_mode, gen)
        if labels is not None:
            labels = labels.to(device)
        yield to_uint8(sample_fn(z, labels).float()).cpu()
