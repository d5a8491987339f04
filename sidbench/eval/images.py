"""Turning a generator into the uint8 image stream that every metric consumes."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

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


def noise_batches(
    num_samples: int,
    batch_size: int,
    shape: tuple[int, int, int],
    label_dim: int = 0,
    seed: int = 0,
    label_mode: str = "cyclic",
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(z, one-hot labels or None) of each batch of an evaluation, on the CPU, from a private generator
    seeded with `seed`: evaluation never disturbs the training RNG, and a seed always draws the same."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        z = torch.randn((n, *shape), generator=gen)
        yield z, draw_labels(torch.arange(start, start + n), label_dim, label_mode, gen)


def _images(sample_fn: SampleFn, z: torch.Tensor, labels: torch.Tensor | None, device: torch.device | str) -> torch.Tensor:
    return to_uint8(sample_fn(z.to(device), None if labels is None else labels.to(device)).float())


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
    """Yield `num_samples` generated images as uint8 batches [B, C, H, W] on the CPU, from the noise of
    `noise_batches`: the same seed always scores the same images."""
    for z, labels in noise_batches(num_samples, batch_size, shape, label_dim, seed, label_mode):
        yield _images(sample_fn, z, labels, device).cpu()


@torch.no_grad()
def shared_batches(
    sample_fn: SampleFn,
    num_samples: int,
    batch_size: int,
    shape: tuple[int, int, int],
    label_dim: int = 0,
    device: torch.device | str = "cpu",
    seed: int = 0,
    label_mode: str = "cyclic",
) -> Iterator[torch.Tensor]:
    """`generated_batches`' images, made by all the processes of the running process group: batch k
    by rank k mod world size. Every rank draws all the noise, so each batch is made from the noise,
    labels and batch composition it has in one process (the same images where the generator is
    the same on every rank, as an EMA of DDP-synchronised weights is), and each round of one
    batch per rank is gathered to every rank. Rank 0 yields the batches in order, on the CPU; the
    other ranks yield nothing. Every rank must run it to its end (each round is a collective)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    draws = noise_batches(num_samples, batch_size, shape, label_dim, seed, label_mode)
    while batch := list(itertools.islice(draws, world)):
        # all_gather wants one shape from every rank: each sends a full batch, padded past its images
        mine = torch.zeros((batch_size, *shape), dtype=torch.uint8, device=device)
        if rank < len(batch):
            z, labels = batch[rank]
            mine[: len(z)] = _images(sample_fn, z, labels, device)
        parts = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(parts, mine)
        if rank == 0:
            for part, (z, _) in zip(parts, batch):
                yield part[: len(z)].cpu()
