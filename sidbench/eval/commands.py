"""What the `sidbench fid` and `sidbench stats` subcommands do (the CLI only parses arguments).

`fid_command` scores a folder, `.npz` or zip of images, or a generator callable (`SampleFn`, with
`shape=` and friends, see `sources.image_batches`), against reference statistics (a dataset key
such as `ffhq64`, an address, or an `.npz` path); `metric_command` does the same with any other
`Metric` (the offline digits distances); `stats_command` writes reference statistics of real
images in EDM's format. All print their result with rich and return it.

The Inception detector is built by this module's `inception_extractor` (looked up at call time,
so tests can replace it) unless a `feature_extractor` is given.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sidbench.eval.base import Metric
from sidbench.eval.fid import FID, FID_MODES, FeatureExtractor, inception_extractor
from sidbench.eval.images import SampleFn
from sidbench.eval.reference import card_references, reference_stats_for, save_reference_stats
from sidbench.eval.sources import (
    DEFAULT_BATCH_SIZE,
    RunningStats,
    accumulate_features,
    folder_files,
    image_batches,
    zip_members,
)

#: The number of generated images of the FID protocol (SPEC section 3).
PROTOCOL_NUM_IMAGES = 50_000


def _count_images(source: str | os.PathLike | SampleFn, num_samples: int | None) -> int | None:
    """Images a source will yield, when that is cheap to know (for the progress bar)."""
    if callable(source):
        return num_samples
    path = Path(source).expanduser()
    total = None
    try:
        if path.is_dir():
            total = len(folder_files(path))
        elif path.suffix.lower() == ".zip":
            total = len(zip_members(path))
    except (OSError, ValueError):
        total = None
    if num_samples is not None:
        return num_samples if total is None else min(num_samples, total)
    return total


def _progress(console: Console, show: bool):
    if not show:
        return nullcontext(None)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _run_stats(extractor: FeatureExtractor, source, num_samples, batch_size, console: Console, progress: bool,
               what: str, **generator_kwargs) -> RunningStats:
    batches = image_batches(source, batch_size=batch_size, num_samples=num_samples, **generator_kwargs)
    with _progress(console, progress and console.is_terminal) as bar:
        if bar is None:
            return accumulate_features(batches, extractor)
        task = bar.add_task(what, total=_count_images(source, num_samples))
        return accumulate_features(batches, extractor, on_batch=lambda n: bar.advance(task, n))


def _source_name(source, source_name: str | None) -> str:
    if source_name is not None:
        return source_name
    return getattr(source, "__name__", "generator") if callable(source) else os.fspath(source)


def _is_edm_reference(ref: str) -> bool:
    refs = card_references()
    return ref in refs or ref in refs.values()


def fid_command(
    source: str | os.PathLike | SampleFn,
    ref: str | os.PathLike,
    *,
    mode: str = "legacy_tensorflow",
    num_samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    inception_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    feature_extractor: FeatureExtractor | None = None,
    console: Console | None = None,
    progress: bool = True,
    source_name: str | None = None,
    extra_rows: Sequence[tuple[str, str]] = (),
    **generator_kwargs,
) -> float:
    """FID of the images in `source` against `ref`; prints and returns it.

    `source` is a folder, `.npz` or zip of images, or a generator callable (`SampleFn`; then
    `num_samples` and `shape=(C, H, W)` are required, `label_dim`, `seed` and `label_mode` in
    `generator_kwargs` go to `generated_batches`, and the noise goes to `device`, where the
    detector runs too). `ref` is a dataset key
    (`cifar10`, `ffhq64`, ...: EDM's statistics, downloaded once), an address, or the path of an
    `.npz` with `mu` and `sigma`. `num_samples` takes the first images of a file source (all of
    them by default). The reference is resolved before the detector is loaded, and both before
    any image is made. `source_name` and `extra_rows` only change what is printed.
    """
    console = console or Console()
    ref_text = os.fspath(ref)
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; use one of {', '.join(FID_MODES)}")
    if mode != "legacy_tensorflow" and _is_edm_reference(ref_text):
        console.print(
            f"[yellow]warning:[/] EDM's reference statistics were made in legacy_tensorflow mode; "
            f"a {mode} FID against them is not comparable with published numbers"
        )
    ref_mu, ref_sigma = reference_stats_for(ref_text, cache_dir=cache_dir, progress=progress)
    if feature_extractor is None:
        feature_extractor = inception_extractor(mode, inception_path=inception_path, device=device,
                                                cache_dir=cache_dir, progress=progress)
    fid = FID(ref_mu, ref_sigma, mode=mode, feature_extractor=feature_extractor)
    if callable(source) and device is not None:
        generator_kwargs["device"] = device
    stats = _run_stats(fid.feature_extractor, source, num_samples, batch_size, console, progress, "FID features",
                       **generator_kwargs)
    value = fid.distance(stats.mu, stats.sigma)

    table = Table(title="FID", show_header=False)
    table.add_row("source", _source_name(source, source_name))
    for key, text in extra_rows:
        table.add_row(key, text)
    table.add_row("reference", ref_text)
    table.add_row("mode", mode)
    table.add_row("images", f"{stats.n:,}")
    table.add_row("FID", f"[bold]{value:.4f}[/]")
    console.print(table)
    if stats.n < PROTOCOL_NUM_IMAGES:
        console.print(
            f"[yellow]note:[/] {stats.n:,} images; the protocol uses {PROTOCOL_NUM_IMAGES:,} "
            "(FID is biased upwards on smaller sets)"
        )
    return value


def metric_command(
    source: str | os.PathLike | SampleFn,
    metric: Metric,
    *,
    num_samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    console: Console | None = None,
    progress: bool = True,
    source_name: str | None = None,
    reference: str | None = None,
    extra_rows: Sequence[tuple[str, str]] = (),
    **generator_kwargs,
) -> float:
    """Any `Metric` (e.g. the offline `fd_pixel`/`fd_digits`) of a file or generator source.

    Sources as in `fid_command`. The result is printed under the metric's own name, so a
    distance that is not FID is never shown as one. Returns the value.
    """
    console = console or Console()
    batches = image_batches(source, batch_size=batch_size, num_samples=num_samples, **generator_kwargs)
    count = 0

    def counted(on_batch):
        nonlocal count
        for batch in batches:
            count += batch.shape[0]
            if on_batch is not None:
                on_batch(batch.shape[0])
            yield batch

    with _progress(console, progress and console.is_terminal) as bar:
        if bar is None:
            value = float(metric.compute(counted(None)))
        else:
            task = bar.add_task(metric.name, total=_count_images(source, num_samples))
            value = float(metric.compute(counted(lambda n: bar.advance(task, n))))

    table = Table(title=metric.name, show_header=False)
    table.add_row("source", _source_name(source, source_name))
    for key, text in extra_rows:
        table.add_row(key, text)
    if reference is not None:
        table.add_row("reference", reference)
    table.add_row("images", f"{count:,}")
    table.add_row(metric.name, f"[bold]{value:.4f}[/]")
    console.print(table)
    return value


def stats_command(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    mode: str = "legacy_tensorflow",
    num_samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    inception_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    feature_extractor: FeatureExtractor | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> Path:
    """Reference statistics of real images (folder, zip or `.npz`) written as EDM's `.npz`.

    Returns the path written (`.npz` is appended when `out` lacks it). Statistics are only
    comparable with FIDs computed in the same `mode`.
    """
    console = console or Console()
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; use one of {', '.join(FID_MODES)}")
    if feature_extractor is None:
        feature_extractor = inception_extractor(mode, inception_path=inception_path, device=device, cache_dir=cache_dir,
                                                progress=progress)
    stats = _run_stats(feature_extractor, source, num_samples, batch_size, console, progress, "reference features")
    path = save_reference_stats(out, stats.mu, stats.sigma)

    table = Table(title="FID reference statistics", show_header=False)
    table.add_row("source", os.fspath(source))
    table.add_row("mode", mode)
    table.add_row("images", f"{stats.n:,}")
    table.add_row("features", str(stats.mu.shape[0]))
    table.add_row("written", str(path))
    console.print(table)
    return path
