"""`sidbench fid SOURCE`: which images, which metric, which reference, then `eval.commands`.

SOURCE is one of
* `teacher`: the dataset card's teacher (`dataset=<d>`, `dataset.teacher.path=...`) sampled with
  EDM's Heun sampler at the card's `sampler_steps`; the result is also recorded in MLflow as the
  teacher's reference value for runs on that dataset (`eval.teacher_metrics`) when it was
  measured against the dataset's own reference;
* a saved generator: a `generator.safetensors`, or the run folder holding one (the dataset then
  defaults to the run's own, from its `config.yaml`);
* a folder, `.npz` or zip of images.

Generated images come from `generated_batches` (the eval group's seed and label mode; labels
cyclic by default, SPEC section 3) on the configured device. The metric is the dataset's
(`eval.metric`: `fid` on the real datasets, the offline `fd_pixel`/`fd_digits` on digits); an
explicit `--ref` always means FID against that reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from sidbench.config import ConfigError, compose
from sidbench.eval.generators import generator_file, is_run_folder

#: Metrics that are not FID, with the reference they carry themselves (for the printout).
OFFLINE_REFERENCES = {
    "fd_pixel": "the 1797 scikit-learn digits (pixel space; not FID)",
    "fd_digits": "the 1797 scikit-learn digits (digits-classifier features; not FID)",
}


@dataclass
class FidResult:
    metric: str
    value: float
    #: the MLflow run that records the value as the teacher's reference (teacher sources, tracking on)
    teacher_run_id: str | None = None


def source_kind(source: str) -> str:
    """`teacher`, `generator` (a `.safetensors` file or a run folder) or `images`."""
    if source == "teacher":
        return "teacher"
    path = Path(source).expanduser()
    if path.suffix == ".safetensors" or is_run_folder(path):
        return "generator"
    return "images"


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
    from sidbench.eval.commands import fid_command, metric_command
    from sidbench.eval.sources import DEFAULT_BATCH_SIZE

    console = console or Console()
    overrides = list(overrides)
    kind = source_kind(source)
    notes: list[tuple[str, str]] = []
    gen_path = None
    if kind == "generator":
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
    mode = mode or str(cfg.eval.fid_mode)
    inception = inception or cfg.eval.get("inception_path")
    metric = "fid" if ref is not None else str(cfg.eval.metric)
    ref_text = ref if ref is not None else (cfg.dataset.get("ref_stats") if metric == "fid" else None)
    if metric == "fid" and not ref_text:
        raise ConfigError(f"dataset {cfg.dataset.name} has no FID reference statistics (dataset.ref_stats); pass --ref")

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

    if metric == "fid":
        gen_kwargs.pop("device", None)  # fid_command puts the noise on its own `device`, the same
        value = fid_command(sample_source, ref_text, mode=mode, num_samples=num, batch_size=batch, device=dev,
                            inception_path=inception, console=console, progress=progress, source_name=source_name,
                            extra_rows=notes, **gen_kwargs)
    else:
        from sidbench.eval.factory import build_metric

        value = metric_command(sample_source, build_metric(metric, cfg), num_samples=num, batch_size=batch,
                               console=console, progress=progress, source_name=source_name,
                               reference=OFFLINE_REFERENCES.get(metric), extra_rows=notes, **gen_kwargs)

    run_id = None
    if teacher is not None and ref is None:
        from sidbench.eval.teacher_metrics import record_teacher_metric

        run_id = record_teacher_metric(
            cfg, teacher.source, metric=metric, value=value, num_samples=int(num), steps=int(steps),
            mode=mode if metric == "fid" else None, ref=str(ref_text) if metric == "fid" else None,
        )
        if run_id is not None:
            console.print(f"recorded as the teacher's {metric} ({int(num):,} images) for runs on {cfg.dataset.name}: "
                          f"MLflow run {run_id}")
    return FidResult(metric, float(value), run_id)
