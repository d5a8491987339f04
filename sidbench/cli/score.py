"""`sidbench fid SOURCE` and `sidbench stats SOURCE`: which images, which metric, which reference.

SOURCE is one of
* `teacher`: the dataset card's teacher (`dataset=<d>`, `dataset.teacher.path=...`) sampled with
  EDM's Heun sampler at the card's `sampler_steps`; the result is also recorded in MLflow as the
  teacher's reference value for runs on that dataset (`eval.teacher_metrics`) when it was
  measured against the dataset's own reference;
* a saved generator: a `generator.safetensors`, or the run folder holding one (the dataset then
  defaults to the run's own, from its `config.yaml`);
* `published=<name>`: a generator released by its authors, from the catalogue
  (`sidbench.eval.published_generators`): downloaded once into the cache, read by the safe EDM
  loader, sampled with the catalogue's recipe and scored on its own dataset by default; the result is
  recorded in MLflow as a run tagged `sidbench.kind=published_generator`;
* a folder, `.npz` or zip of images (`eval.sources`: files are read by clean-fid).

Generated images come from `generated_batches` (the eval group's seed and label mode; labels
cyclic by default, docs/fid.md) on the configured device. The metric is the dataset's
(`eval.metric`: `fid` on the real datasets, the offline `fd_pixel`/`fd_digits` on digits, or any
registered metric), built from the config as a run builds it (`sidbench.eval.factory.build_metric`);
the options `--ref`, `--mode` and `--inception` are settings of that config (`dataset.ref_stats`,
`eval.fid_mode`, `eval.inception_path`), and an explicit `--ref` always means FID against that
reference. `stats` writes the reference of real images for FID (statistics in EDM's `.npz`
format), FD-DINOv2 (statistics) or precision/recall (features). The Inception detector is built by `sidbench.eval.fid.inception_extractor` (looked up at call time, so
tests can replace it).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sidbench.config import ConfigError, compose
from sidbench.eval import fid as fid_module
from sidbench.eval.base import Metric
from sidbench.eval.factory import build_metric
from sidbench.eval.fid import FID, FeatureExtractor, check_mode
from sidbench.eval.generators import generator_file, is_run_folder
from sidbench.eval.images import SampleFn
from sidbench.eval.protocol import DEFAULT_BATCH_SIZE
from sidbench.eval.reference import save_reference_stats
from sidbench.eval.sources import accumulate_features, image_batches, image_files


@dataclass
class FidResult:
    metric: str
    value: float  #: the first value (the only one of a distance)
    #: the MLflow run that records the value (tracking on): the teacher's reference, or a released
    #: generator's measurement
    run_id: str | None = None
    #: every value by name: {metric: value} for a distance, {precision: p, recall: r} for precision_recall
    values: dict[str, float] = field(default_factory=dict)


PUBLISHED = "published="


def source_kind(source: str) -> str:
    """`teacher`, `published` (`published=<name>`), `generator` (a `.safetensors` file or a run
    folder) or `images`."""
    if source == "teacher":
        return "teacher"
    if source.startswith(PUBLISHED):
        return "published"
    path = Path(source).expanduser()
    if path.suffix == ".safetensors" or is_run_folder(path):
        return "generator"
    return "images"


def _take_published(source: str, overrides: list[str]) -> tuple[str, list[str]]:
    """(source, overrides) with `published=<name>` as the source wherever it was written: argparse
    takes the first word for SOURCE, so `sidbench fid dataset=x published=y` has it among the overrides."""
    named = [o for o in overrides if o.startswith(PUBLISHED)]
    if not named:
        return source, overrides
    rest = [o for o in overrides if not o.startswith(PUBLISHED)]
    if len(named) > 1 or source.startswith(PUBLISHED) or "=" not in source or Path(source).expanduser().exists():
        raise ConfigError(f"score one source at a time: {' and '.join([source, *named])}")
    return named[0], [source, *rest]


def _has_group(overrides: list[str], group: str) -> bool:
    return any(o.partition("=")[0].lstrip("+~") == group for o in overrides)


def _run_dataset(gen_path: Path) -> str | None:
    """The dataset a run folder's generator was trained on, from the run's `config.yaml`."""
    config = gen_path.parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        name = OmegaConf.select(OmegaConf.load(config), "dataset.name")
    except Exception:  # noqa: BLE001 - an unreadable config only loses the default
        return None
    return None if name is None else str(name)


def _check_fits(cfg: DictConfig, shape: tuple[int, int, int], label_dim: int, what: str) -> None:
    ds = cfg.dataset
    want = (int(ds.channels), int(ds.resolution), int(ds.resolution))
    if tuple(shape) != want or int(label_dim) != int(ds.get("label_dim", 0) or 0):
        raise ConfigError(
            f"{what} makes {shape[0]}x{shape[1]}x{shape[2]} images with label_dim {label_dim}, but dataset "
            f"{ds.name} has {want[0]}x{want[1]}x{want[2]} with label_dim {ds.get('label_dim', 0)}; "
            "pass the dataset it belongs to (dataset=<name>)"
        )


def run_fid(
    source: str,
    overrides: list[str],
    *,
    ref: str | None = None,
    mode: str | None = None,
    num: int | None = None,
    batch: int | None = None,
    device: str | None = None,
    inception: str | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> FidResult:
    """Score `source` (see the module's docstring); prints a table and returns the number."""
    from sidbench.distributed import pick_device

    console = console or Console()
    source, overrides = _take_published(source, list(overrides))
    kind = source_kind(source)
    notes: list[tuple[str, str]] = []
    gen_path = entry = None
    if kind == "published":
        from sidbench.eval.published_generators import find_published

        entry = find_published(source[len(PUBLISHED):])
        if not _has_group(overrides, "dataset"):
            overrides.insert(0, f"dataset={entry.dataset}")
    elif kind == "generator":
        gen_path = generator_file(source)
        if not _has_group(overrides, "dataset"):
            name = _run_dataset(gen_path)
            if name is None:
                raise ConfigError(f"cannot tell which dataset {gen_path} was trained on (no run config.yaml beside it); "
                                  "pass dataset=<name>")
            overrides.insert(0, f"dataset={name}")
            notes.append(("dataset", f"{name} (from {gen_path.parent / 'config.yaml'})"))
    elif Path(source).suffix == ".pkl":
        raise ConfigError(f"{source} is a checkpoint, not images; score a teacher with "
                          f"`sidbench fid teacher dataset=<name> dataset.teacher.path={source}`")
    elif kind == "images" and ref is None and not _has_group(overrides, "dataset"):
        raise ConfigError(f"name the reference for {source}: --ref <dataset key, address or .npz of statistics> "
                          "or dataset=<name> (its own metric and reference)")
    cfg = compose(overrides)
    dev = pick_device(device or str(cfg.device))
    # The options are settings of the config, so that the metric is built as a run builds it.
    for key, value in (("dataset.ref_stats", ref), ("eval.fid_mode", mode), ("eval.inception_path", inception)):
        if value is not None:
            OmegaConf.update(cfg, key, value, force_add=True)
    metric_name = "fid" if ref is not None else str(cfg.eval.metric)

    gen_kwargs: dict = {}
    teacher = steps = None
    if kind == "images":
        sample_source, source_name = source, source
        batch = batch or DEFAULT_BATCH_SIZE
    else:
        if kind == "teacher":
            from sidbench.eval.generators import teacher_sampler
            from sidbench.teachers.load import load_teacher

            teacher = load_teacher(cfg.dataset.teacher, dev)
            steps = int(cfg.dataset.teacher.sampler_steps)
            sample_source = teacher_sampler(teacher.net, steps)
            shape, label_dim = teacher.shape, teacher.label_dim
            source_name = f"teacher {teacher.source}"
            notes.append(("sampler", f"Heun, {steps} steps ({2 * steps - 1} NFE)"))
            what = f"teacher {teacher.source}"
        elif kind == "published":
            from sidbench.eval.generators import load_published_generator
            from sidbench.eval.published_generators import fetch_published

            gen_path = fetch_published(entry, progress=progress)
            gen = load_published_generator(gen_path, entry.sampling, method=entry.method, device=dev,
                                           constructor=entry.constructor)
            sample_source, shape, label_dim = gen, gen.shape, gen.label_dim
            source_name = f"{entry.name}: {entry.label}, released by its authors ({entry.url})"
            notes.append(("generator", f"{gen.describe()}; file {gen_path}"))
            if str(cfg.dataset.name) != entry.dataset:
                notes.append(("dataset", f"{cfg.dataset.name} (the generator was distilled on {entry.dataset})"))
            if entry.paper_fid is not None:
                notes.append(("paper's FID", f"{entry.paper()}; not measured here"))
            what = f"released generator {entry.name}"
        else:
            from sidbench.eval.generators import load_generator

            gen = load_generator(gen_path, dev)
            sample_source, shape, label_dim = gen, gen.shape, gen.label_dim
            source_name = str(gen_path)
            notes.append(("generator", gen.describe()))
            what = f"generator {gen_path}"
        _check_fits(cfg, shape, label_dim, what)
        num = num or int(cfg.eval.final_samples)
        batch = batch or int(cfg.eval.batch_size)
        gen_kwargs = dict(shape=shape, label_dim=label_dim, device=dev, seed=int(cfg.eval.seed),
                          label_mode=str(cfg.eval.label_mode))
        if not any(k == "dataset" for k, _ in notes):
            notes.append(("dataset", str(cfg.dataset.name)))
        notes.append(("labels", f"{cfg.eval.label_mode}, seed {cfg.eval.seed}" if label_dim else f"none, seed {cfg.eval.seed}"))

    metric = build_metric(metric_name, cfg, device=dev, progress=progress)
    values = metric_values_command(sample_source, metric, num_samples=num, batch_size=batch, console=console,
                                   progress=progress, source_name=source_name, extra_rows=notes, **gen_kwargs)
    value = next(iter(values.values()))

    run_id = None
    if entry is not None:
        from sidbench.eval.published_generators import record_published_metric

        run_id = record_published_metric(cfg, entry, gen_path, metric=metric.name, values=values, num_samples=int(num),
                                         settings=type(metric).measurement_settings(cfg))
        if run_id is not None:
            console.print(f"recorded as a measurement of the released generator {entry.name} ({int(num):,} images) "
                          f"on {cfg.dataset.name}: MLflow run {run_id}")
    if teacher is not None and ref is None and len(values) == 1:
        from sidbench.eval.teacher_metrics import record_teacher_metric

        run_id = record_teacher_metric(cfg, teacher.source, metric=metric.name, value=value, num_samples=int(num),
                                       steps=int(steps), settings=type(metric).measurement_settings(cfg))
        if run_id is not None:
            console.print(f"recorded as the teacher's {metric.name} ({int(num):,} images) for runs on {cfg.dataset.name}: "
                          f"MLflow run {run_id}")
    return FidResult(metric.name, float(value), run_id, values)


# ------------------------------------------------------------------------------------------------
# Scoring a source with a metric, and writing reference statistics


def _count_images(source: str | os.PathLike | SampleFn, num_samples: int | None) -> int | None:
    """Images a source will yield, when that is cheap to know (for the progress bar)."""
    if callable(source):
        return num_samples
    try:
        total = len(image_files(source)[0])
    except Exception:  # noqa: BLE001 - only the bar's total is lost; the reader reports the problem
        total = None
    if num_samples is not None:
        return num_samples if total is None else min(num_samples, total)
    return total


def _counted(batches: Iterable[torch.Tensor], console: Console, show: bool, what: str, total: int | None,
             seen: list[int]) -> Iterator[torch.Tensor]:
    """The batches, counted into `seen[0]`, behind a transient progress bar on a terminal."""
    bar = (Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True) if show and console.is_terminal else nullcontext(None))
    with bar as bar:
        task = bar.add_task(what, total=total) if bar is not None else None
        for batch in batches:
            seen[0] += batch.shape[0]
            if bar is not None:
                bar.advance(task, batch.shape[0])
            yield batch


def _source_name(source, source_name: str | None) -> str:
    if source_name is not None:
        return source_name
    return getattr(source, "__name__", "generator") if callable(source) else os.fspath(source)


def metric_command(
    source: str | os.PathLike | SampleFn,
    metric: Metric,
    *,
    num_samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    console: Console | None = None,
    progress: bool = True,
    source_name: str | None = None,
    extra_rows: Sequence[tuple[str, str]] = (),
    **generator_kwargs,
) -> float:
    """`metric` (FID, `fd_pixel`, ...) of a file or generator source (`sources.image_batches`);
    printed under the metric's own title, so a distance that is not FID is never shown as one,
    with its reference, its details and its caveats."""
    values = metric_values_command(source, metric, num_samples=num_samples, batch_size=batch_size, console=console,
                                   progress=progress, source_name=source_name, extra_rows=extra_rows, **generator_kwargs)
    return next(iter(values.values()))


def metric_values_command(
    source: str | os.PathLike | SampleFn,
    metric: Metric,
    *,
    num_samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    console: Console | None = None,
    progress: bool = True,
    source_name: str | None = None,
    extra_rows: Sequence[tuple[str, str]] = (),
    **generator_kwargs,
) -> dict[str, float]:
    """Every value of `metric` (precision and recall: two) of a source, printed as `metric_command`
    prints one; {value name: value}."""
    console = console or Console()
    batches = image_batches(source, batch_size=batch_size, num_samples=num_samples, **generator_kwargs)
    seen = [0]
    values = {k: float(v) for k, v in metric.compute_values(
        _counted(batches, console, progress, metric.name, _count_images(source, num_samples), seen)).items()}
    table = Table(title=metric.title or metric.name, show_header=False)
    table.add_row("source", _source_name(source, source_name))
    for key, text in [*extra_rows, *metric.details()]:
        table.add_row(key, text)
    table.add_row("images", f"{seen[0]:,}")
    for key, value in values.items():
        label = table.title if len(values) == 1 else key
        better = " (higher is better)" if key in metric.higher_is_better else ""
        table.add_row(label, f"[bold]{value:.4f}[/]{better}")
    console.print(table)
    for note in metric.caveats(seen[0]):
        console.print(f"[yellow]note:[/] {note}")
    return values


def fid_command(
    source: str | os.PathLike | SampleFn,
    ref: str | os.PathLike,
    *,
    mode: str = "legacy_tensorflow",
    device: torch.device | str | None = None,
    inception_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    feature_extractor: FeatureExtractor | None = None,
    console: Console | None = None,
    progress: bool = True,
    **score_kwargs,
) -> float:
    """FID of the images in `source` against `ref` (a dataset key such as `ffhq64`: EDM's
    statistics, downloaded once; an address; or an `.npz` with `mu` and `sigma`); prints and
    returns it. The reference is resolved before the detector is loaded, and both before any
    image is made. Other arguments as in `metric_command`; a generator's noise goes to `device`,
    where the detector runs too. (`sidbench fid` builds the same `FID` from its config.)"""
    metric = FID(os.fspath(ref), mode=mode, inception_path=inception_path, feature_extractor=feature_extractor,
                 device=device, cache_dir=cache_dir, progress=progress)
    metric.reference_stats  # noqa: B018 - a bad reference fails before the detector is loaded
    if callable(source) and device is not None:
        score_kwargs["device"] = device
    return metric_command(source, metric, console=console, progress=progress, **score_kwargs)


#: The metrics whose reference `sidbench stats` makes, and what it keeps of the features.
STATS_METRICS = {"fid": "statistics (mu, sigma) of Inception-v3 features, EDM's .npz",
                 "fd_dinov2": "statistics (mu, sigma) of DINOv2 ViT-L/14 features",
                 "precision_recall": "VGG16 features [N, 4096] themselves (float32)"}


def stats_command(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    metric: str = "fid",
    mode: str = "legacy_tensorflow",
    num_samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    inception_path: str | os.PathLike | None = None,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    feature_extractor: FeatureExtractor | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> Path:
    """The reference of `metric` made from real images (folder, zip or `.npz`): FID's statistics in
    EDM's `.npz` (only comparable with FIDs computed in the same `mode`), FD-DINOv2's statistics, or
    precision/recall's features (`STATS_METRICS`). `weights_path`: the DINOv2 or VGG16 file (else
    its environment variable, else the cache). Returns the path written (`.npz` appended when `out`
    lacks it)."""
    console = console or Console()
    if metric not in STATS_METRICS:
        raise ConfigError(f"sidbench stats makes references for {', '.join(STATS_METRICS)}, not {metric!r}")
    batches = image_batches(source, batch_size=batch_size, num_samples=num_samples)
    if feature_extractor is None:
        if metric == "fid":
            check_mode(mode)
            feature_extractor = fid_module.inception_extractor(mode, inception_path=inception_path, device=device,
                                                               cache_dir=cache_dir, progress=progress)
        elif metric == "fd_dinov2":
            from sidbench.eval.dinov2 import dinov2_extractor

            feature_extractor = dinov2_extractor(weights_path, device=device, cache_dir=cache_dir, progress=progress)
        else:
            from sidbench.eval.vgg16 import vgg16_extractor

            feature_extractor = vgg16_extractor(weights_path, device=device, cache_dir=cache_dir, progress=progress)
    seen = [0]
    counted = _counted(batches, console, progress, "reference features", _count_images(source, num_samples), seen)
    if metric == "precision_recall":
        from sidbench.eval.metric_refs import save_features
        from sidbench.eval.precision_recall import PrecisionRecall

        features = PrecisionRecall(np.zeros((0, 1), np.float32), feature_extractor=feature_extractor).features(counted)
        path = save_features(out, features, metric)
        count, width = features.shape
    else:
        stats = accumulate_features(counted, feature_extractor)
        path = save_reference_stats(out, stats.mu, stats.sigma, metric=metric)
        count, width = stats.n, stats.mu.shape[0]
    table = Table(title=f"{metric} reference", show_header=False)
    rows = [("source", os.fspath(source)), ("metric", metric), ("holds", STATS_METRICS[metric])]
    if metric == "fid":
        rows.append(("mode", mode))
    for key, text in (*rows, ("images", f"{count:,}"), ("features", str(width)), ("written", str(path))):
        table.add_row(key, text)
    console.print(table)
    return path


def stats_for_dataset(source: str | os.PathLike, overrides: list[str], *, metric: str, out: str | os.PathLike | None,
                      weights: str | os.PathLike | None = None, **options) -> Path:
    """`sidbench stats SOURCE dataset=<d> --metric <m>`: without `--out`, the reference goes where
    the dataset's runs look for it (`eval.refs.<m>`, else the cache's `refs/<dataset>-<m>.npz`), and
    the weights default to the config's (`eval.dinov2_path`, `eval.vgg16_path`)."""
    if out is None or (weights is None and metric != "fid"):
        cfg = compose(list(overrides))
        if out is None:
            if metric == "fid":
                raise ConfigError("name the FID statistics file to write: --out FILE.npz (FID's references are EDM's, "
                                  "dataset.ref_stats)")
            if not _has_group(list(overrides), "dataset"):
                raise ConfigError(f"name the dataset these images belong to (dataset=<name>), or the file: --out FILE.npz")
            from sidbench.eval.metric_refs import configured_reference

            out = configured_reference(cfg, metric)
        if weights is None and metric != "fid":
            weights = cfg.eval.get("dinov2_path" if metric == "fd_dinov2" else "vgg16_path")
    return stats_command(source, out, metric=metric, weights_path=weights, **options)
