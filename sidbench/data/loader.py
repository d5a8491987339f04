"""Real training images at GPU speed: a seeded, resumable stream, decoded ahead of the training
loop by PyTorch DataLoader worker processes.

The stream is a sequence of image indices drawn uniformly with replacement, fixed by (run seed,
process rank) alone: position p holds index `block[p % BLOCK]` of block `p // BLOCK`, each block
`torch.randint(count, (BLOCK,))` from a generator seeded by (seed, STREAM, rank, block). So where
the stream is cut into the workers' chunks (`data.chunk`), how many workers decode it and how far
they read ahead change nothing a run computes; a resumed run continues at the position its
checkpoint kept (`state_dict`), and each DDP process reads its own stream.

`ctx.real(n)` takes the next n images of the stream (`RealImageLoader.draw`): chunks of
`data.chunk` images are decoded by `data.workers` processes, `data.prefetch` chunks each ahead,
handed over as uint8 (pinned on CUDA) and scaled to [-1, 1] on the device. A chunk that cannot be
decoded is one line naming the file (raised in the training process, not a worker's traceback).
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from sidbench.data.image_files import uint8_to_float
from sidbench.data.real import DataError, RealImages, open_real_images
from sidbench.seeding import generator

#: Indices per block of the stream (a constant of the stream's definition, not a setting).
BLOCK = 4096
#: Separates the stream's seeds from every other use of the run seed.
STREAM = 0x7EA1


def stream_indices(count: int, seed: int, rank: int, start: int, n: int) -> torch.Tensor:
    """Positions [start, start + n) of the stream of (seed, rank) over `count` images (int64 [n])."""
    parts, pos, end = [], start, start + n
    while pos < end:
        block, offset = divmod(pos, BLOCK)
        drawn = torch.randint(count, (BLOCK,), generator=generator(seed, STREAM, rank, block))
        take = min(BLOCK - offset, end - pos)
        parts.append(drawn[offset:offset + take])
        pos += take
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


class _Chunks(Dataset):
    """Chunk c: the images at positions [start + c * chunk, start + (c + 1) * chunk) of the stream,
    decoded (uint8), with their classes; or the one-line error that stopped the decoding."""

    def __init__(self, images: RealImages, seed: int, rank: int, start: int, chunk: int) -> None:
        self.images, self.seed, self.rank, self.start, self.chunk = images, seed, rank, start, chunk

    def __getitem__(self, c: int) -> tuple[torch.Tensor, torch.Tensor] | str:
        index = stream_indices(self.images.count, self.seed, self.rank, self.start + c * self.chunk, self.chunk)
        try:
            pixels = self.images.read_uint8(index.tolist())
        except DataError as e:
            return str(e)  # raised by the training process, as one line
        classes = self.images.classes[index] if self.images.classes is not None else torch.zeros(0, dtype=torch.int64)
        return pixels, classes


class _Forever(Sampler):
    """0, 1, 2, ...: the chunks in stream order (the DataLoader hands them back in this order)."""

    def __iter__(self) -> Iterator[int]:
        return itertools.count()


class RealImageLoader:
    """`draw(n, device)` as `RealImages.draw`, from the stream of (seed, rank), decoded ahead by
    `workers` processes (0: in the calling process, when drawn). `state_dict()` is the position."""

    def __init__(self, images: RealImages, *, seed: int, rank: int = 0, workers: int = 4, prefetch: int = 4,
                 chunk: int = 256, pin_memory: bool = False) -> None:
        if images.read_uint8 is None:
            raise ValueError(f"{images.source} has no uint8 reader: draw from it with RealImages.draw")
        self.images = images
        self.seed, self.rank = int(seed), int(rank)
        self.workers, self.prefetch, self.chunk = int(workers), int(prefetch), int(chunk)
        self.pin_memory = pin_memory
        self.position = 0  # images of the stream handed out so far
        self._iter: Iterator | None = None
        self._pixels: torch.Tensor | None = None  # decoded, not yet handed out
        self._classes: torch.Tensor | None = None

    # Like RealImages, so the step context and the methods see one interface.
    @property
    def count(self) -> int:
        return self.images.count

    @property
    def label_dim(self) -> int:
        return self.images.label_dim

    @property
    def source(self) -> str:
        return self.images.source

    def __len__(self) -> int:
        return self.images.count

    def _start(self) -> None:
        chunks = _Chunks(self.images, self.seed, self.rank, self.position, self.chunk)
        extra: dict[str, Any] = {"prefetch_factor": self.prefetch} if self.workers else {}
        # its own generator: a DataLoader otherwise draws its workers' base seed from the global one
        loader = DataLoader(chunks, batch_size=None, sampler=_Forever(), num_workers=self.workers,
                            pin_memory=self.pin_memory, generator=generator(self.seed, STREAM, self.rank, -1),
                            **extra)
        self._iter = iter(loader)
        self._pixels = self._classes = None

    def _next_chunk(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = next(self._iter)
        if isinstance(item, str):
            raise DataError(item)
        return item

    def draw(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next n images of the stream (float [-1, 1]) and their one-hot labels (None if
        unconditional), on `device`."""
        if self._iter is None:
            self._start()
        pixels, classes = [], []
        need = n
        while need > 0:
            if self._pixels is None or len(self._pixels) == 0:
                self._pixels, self._classes = self._next_chunk()
            take = min(need, len(self._pixels))
            pixels.append(self._pixels[:take])
            classes.append(self._classes[:take])
            self._pixels, self._classes = self._pixels[take:], self._classes[take:]
            need -= take
        self.position += n
        x = torch.cat(pixels) if len(pixels) > 1 else pixels[0]
        images = uint8_to_float(x.to(device, non_blocking=True))
        if not self.label_dim:
            return images, None
        c = torch.cat(classes) if len(classes) > 1 else classes[0]
        return images, torch.nn.functional.one_hot(c.to(device), self.label_dim).float()

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at `state["position"]`: the next draw reads from there (workers restart)."""
        self.close()
        self.position = int(state["position"])

    def close(self) -> None:
        """Stop the workers (they are daemons: a run that ends without this leaves none behind)."""
        self._iter = None
        self._pixels = self._classes = None


def open_real_data(cfg: DictConfig, shape: tuple[int, int, int], label_dim: int, rank: int,
                   device: torch.device) -> RealImages | RealImageLoader:
    """The run's real images (`open_real_images`, checked against the teacher's `shape` and
    `label_dim`): files on disk through a `RealImageLoader` (the `data` group's workers, prefetch
    and chunk; the stream of (trainer.seed, rank)), images held in memory as they are."""
    images = open_real_images(cfg.dataset, shape, label_dim)
    if images.read_uint8 is None:
        return images
    d = cfg.data
    # no more workers than this process may use cores (DataLoader warns, and they would only queue)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return RealImageLoader(images, seed=int(cfg.trainer.seed), rank=rank, workers=min(int(d.workers), cores),
                           prefetch=int(d.prefetch), chunk=int(d.chunk), pin_memory=torch.device(device).type == "cuda")
