"""Periodic evaluation: the run's metrics over one set of freshly generated images, and sample grids."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from sidbench.eval.base import Metric
from sidbench.distributed import is_distributed
from sidbench.eval.images import SampleFn, draw_labels, generated_batches, shared_batches


class Evaluator:
    """`metrics`: the metrics of every evaluation, the headline first (`eval.metric`, then
    `eval.metrics`); `final_metrics`: those measured only at the end (`eval.final_metrics`). A
    single metric, or None for no evaluation, is accepted too.

    `shared=True` (every rank of a multi-process run builds one; only rank 0's has metrics): while
    a process group runs, every rank makes its share of the images (`shared_batches`) and rank 0
    scores them all; the other ranks' calls return {}. Without a process group (one process) it
    makes them all, the same images either way."""

    def __init__(
        self,
        metrics: Metric | Sequence[Metric] | None,
        num_samples: int,
        batch_size: int,
        shape: tuple[int, int, int],
        label_dim: int,
        device: torch.device,
        seed: int = 0,
        label_mode: str = "cyclic",
        final_metrics: Sequence[Metric] = (),
        shared: bool = False,
    ) -> None:
        self.metrics: list[Metric] = [] if metrics is None else [metrics] if isinstance(metrics, Metric) else list(metrics)
        self.final_metrics = list(final_metrics)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shape = shape
        self.label_dim = label_dim
        self.device = device
        self.seed = seed
        self.label_mode = label_mode
        self.shared = shared

    @property
    def metric(self) -> Metric | None:
        """The headline metric (None: no evaluation)."""
        return self.metrics[0] if self.metrics else None

    def __call__(self, sample_fn: SampleFn, metrics: Sequence[Metric] | None = None) -> dict[str, float]:
        """{"eval/<value>": value for each value of each metric (default: `self.metrics`),
        "eval/seconds": cost}; the same seed scores the same noise. With several metrics the
        images are generated once and held in memory (num_samples x C x H x W bytes)."""
        metrics = self.metrics if metrics is None else list(metrics)
        start = time.perf_counter()
        shared = self.shared and is_distributed()
        if not shared and not metrics:
            return {}
        batches = self._batches(sample_fn, shared)
        if len(metrics) > 1:
            batches = list(batches)
        out = self._score(batches, metrics)
        if shared:  # make the rounds no metric read (all of them on the ranks without metrics): the others wait in them
            deque(batches, maxlen=0)
        return {**out, "eval/seconds": time.perf_counter() - start} if metrics else {}

    def images(self, sample_fn: SampleFn) -> list[torch.Tensor]:
        """All the images of an evaluation, made now and held (uint8 batches on the CPU), to be
        scored by `score` later: with a shared evaluator while a process group runs, every rank
        makes its share (every rank must call this), rank 0 holds them and the others get []."""
        return list(self._batches(sample_fn, self.shared and is_distributed()))

    def score(self, images: Sequence[torch.Tensor], metrics: Sequence[Metric], seconds: float = 0.0) -> dict[str, float]:
        """`__call__`'s values for images made by `images`; `seconds`, what making them took, is
        counted in "eval/seconds"."""
        start = time.perf_counter()
        out = self._score(images, metrics)
        return {**out, "eval/seconds": seconds + time.perf_counter() - start} if metrics else {}

    def _batches(self, sample_fn: SampleFn, shared: bool) -> Iterator[torch.Tensor]:
        args = (sample_fn, self.num_samples, self.batch_size, self.shape, self.label_dim, self.device, self.seed, self.label_mode)
        return shared_batches(*args) if shared else generated_batches(*args)

    @staticmethod
    def _score(batches: Iterable[torch.Tensor], metrics: Sequence[Metric]) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in metrics:
            out.update({f"eval/{k}": float(v) for k, v in metric.compute_values(batches).items()})
        return out

    @torch.no_grad()
    def sample_grid(self, sample_fn: SampleFn, path: Path, n: int = 64) -> Path:
        """A PNG grid of `n` samples from fixed noise, so grids of one run are comparable."""
        from torchvision.utils import save_image

        gen = torch.Generator().manual_seed(self.seed + 1)
        z = torch.randn((n, *self.shape), generator=gen).to(self.device)
        labels = draw_labels(torch.arange(n), self.label_dim, "cyclic")
        x = sample_fn(z, None if labels is None else labels.to(self.device)).float().cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Upscale small images (8x8 digits) so the grid is legible.
        scale = max(1, 32 // self.shape[-1])
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x
        save_image((x.clamp(-1, 1) + 1) / 2, path, nrow=int(n**0.5))
        return path
