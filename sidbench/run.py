"""`sidbench run`: config -> teacher -> method -> trainer (-> evaluation, tracking)."""
from __future__ import annotations

import json
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from sidbench.data.loader import open_real_data
from sidbench.distributed import broadcast_object, init_from_env, local_rank, pick_device, rank_zero_first, shutdown, wrap_ddp
from sidbench.eval.evaluator import Evaluator
from sidbench.eval.generators import GENERATOR_FILENAME
from sidbench.labels import label_frequencies, label_sampler
from sidbench.methods import METHODS
from sidbench.methods.base import Method
from sidbench.teachers.load import load_teacher, resolve_teacher_path, save_native_teacher
from sidbench.run_folder import (
    CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, RECORD_NAME, Start, claim, named_dir, new_folder, plan_start, record_mlflow_run, restart_records, resume_dir, write_records,
)
from sidbench.tracking import NullTracker, TrackingStoreError, code_version, run_tags, start_tracker, tracking_uri
from sidbench.trainer.context import configure_math, emulated_precision_warning
from sidbench.trainer.interrupt import TrainingInterrupted
from sidbench.trainer.loop import Trainer
from sidbench.trainer.progress import Progress

console = Console(stderr=True)


@dataclass
class RunResult:
    run_dir: Path
    progress: Progress
    metrics: dict[str, float]
    mlflow_run_id: str | None
    rank: int = 0
    #: the teacher's own values of the metric (`reference_metrics`: measured at the evaluations'
    #: size as `<metric>`, at the end's as `<metric>_final`, or the published `<metric>_published`)
    teacher: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """The final metric and how it compares with the teacher's at the same number of images (or
        its published figure): `eval/fd_pixel_final 0.0997 = 1.07x the teacher's 0.0928`."""
        parts = []
        for key, value in self.metrics.items():
            if key.removesuffix("_final").endswith("seconds"):
                continue
            name = key.removeprefix("eval/")
            text = f"{key} {value:.4g}"
            if self.teacher.get(name):
                text += f" = {value / self.teacher[name]:.2f}x the teacher's {self.teacher[name]:.4g}"
            elif self.teacher.get(f"{name.removesuffix('_final')}_published"):
                ref = self.teacher[f"{name.removesuffix('_final')}_published"]
                text += f" = {value / ref:.2f}x the teacher's published {ref:.4g}"
            parts.append(text)
        return ", ".join(parts)


NETWORKS_HEADER = "# networks: the teacher's constructor (dataset.teacher.constructor above) with these changes"


def dry_run(cfg: DictConfig) -> str:
    """The resolved config, the networks the method would build (asked of the method, each as its
    changes to the teacher's constructor, which the config already shows) and the budget; loads nothing."""
    from sidbench.trainer.loop import budget_of

    teacher = OmegaConf.to_container(cfg.dataset.teacher.constructor, resolve=True)
    nets = METHODS.get(str(cfg.method.name)).plan_networks(cfg.method, teacher)
    changes = {name: {k: v for k, v in c.items() if teacher.get(k, object()) != v} for name, c in nets.items()}
    budget = budget_of(cfg.trainer)
    if budget.unit == "kimg":
        length = f"{budget.value:g} kimg"
    else:  # its kimg follow from the method's cost per image, which only running it measures
        length = (f"{budget.value:.4g} {budget.unit}; the kimg follow from the cost per image measured in the first "
                  "iterations (sidbench run prints them as it goes)")
    return (OmegaConf.to_yaml(cfg) + f"\n{NETWORKS_HEADER}\n" + json.dumps(changes) + f"\n# budget: {length}\n")


def claim_run_dir(cfg: DictConfig, overrides: list[str] | None) -> tuple[Start, Any]:
    """Rank 0's part of starting: the run folder (the one `resume` names, the one `run_name` names,
    or a new one), held for this process, its records made clean for a run begun again, and the
    settings written for a run that does not resume. Returns what the start does and the held lock."""
    named = resume_dir(cfg) if cfg.resume else named_dir(cfg)
    run_dir = named or new_folder(Path(str(cfg.output_root)) / str(cfg.dataset.name), str(cfg.method.name))
    lock = claim(run_dir)
    try:
        start = plan_start(cfg, run_dir)  # again, now that the folder is ours: another run may have ended
        if start.kind == "restart":
            restart_records(run_dir, start.mlflow_run_id, tracking_uri(cfg) if cfg.tracking.enabled else None)
        if start.kind != "resume":
            write_records(run_dir, cfg, overrides)
    except BaseException:
        lock.release()
        raise
    return start, lock


def reference_metrics(cfg: DictConfig, info: dict[str, Any], teacher_file: str | Path | None = None,
                      rank: int = 0) -> dict[str, float]:
    """The teacher's own value of the run's metric, logged as `teacher/<metric>` beside the curve,
    and, where the run's end is scored on more images than its evaluations (`eval.final_samples`),
    its value at that size as `teacher/<metric>_final`: a Frechet distance depends on the number of
    images, so the end is only compared with a teacher measured at the end's size.

    In order: a measurement recorded in MLflow by `sidbench fid teacher dataset=<d>` for this
    teacher file, metric, FID mode, reference and sample count (for the curve the run's evaluation
    size, else its final size; for the end its final size; see `sidbench.eval.teacher_metrics`);
    a value measured and stored with the teacher's weights (`metrics`, and `final_metrics` at
    `final_metric_samples`); for what is still missing, the published figure of the dataset card,
    logged under a `_published` suffix so nobody mistakes it for a measurement.
    """
    metric = str(cfg.eval.metric)
    num, final = int(cfg.eval.num_samples), int(cfg.eval.final_samples)
    out: dict[str, float] = {}
    if teacher_file is not None:
        from sidbench.eval import METRICS
        from sidbench.eval.teacher_metrics import lookup_teacher_metrics

        def ask() -> dict[str, float | None]:
            # One search of the store and one hash of the teacher file serve both sizes.
            found = lookup_teacher_metrics(cfg, teacher_file, metric=metric, num_samples=[num, final],
                                           steps=int(cfg.dataset.teacher.sampler_steps),
                                           settings=METRICS.get(metric).measurement_settings(cfg))
            value = {n: hit["value"] for n, hit in found.items()}
            # The curve: a measurement at its own size, else at the final size; the end: at its own.
            return {metric: value.get(num, value.get(final)),
                    **({f"{metric}_final": value.get(final)} if final != num else {})}

        # Rank 0 asks the store and tells the others (a collective: `_run` calls this on every
        # rank at the same point); parallel readers of a SQLite store would race its writer.
        cached = broadcast_object(ask() if rank == 0 else None)
        out = {k: v for k, v in cached.items() if v is not None}
    if metric not in out and (info.get("metrics") or {}).get(metric) is not None:
        out[metric] = float(info["metrics"][metric])
    if (final != num and f"{metric}_final" not in out and info.get("final_metric_samples") == final
            and (info.get("final_metrics") or {}).get(metric) is not None):
        out[f"{metric}_final"] = float(info["final_metrics"][metric])
    # The published figure (at the protocol's size) stands in for whatever was not measured.
    published = (info.get("published") or {}).get(metric)
    if published is not None and (metric not in out or (final != num and f"{metric}_final" not in out)):
        out[f"{metric}_published"] = float(published)
    return out


def run(cfg: DictConfig, overrides: list[str] | None = None) -> RunResult:
    """Train the run of `cfg`; `overrides` (the command line that composed it) are kept in the run
    folder so that `resume=<run dir>` alone composes the same config again."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = pick_device(cfg.device, local_rank())
    configure_math(cfg.trainer)
    rank, world = init_from_env(device)
    try:
        return _run(cfg, device, rank, world, overrides)
    finally:
        shutdown()


def _run(cfg: DictConfig, device: torch.device, rank: int, world: int, overrides: list[str] | None) -> RunResult:
    # Every rank works in rank 0's run folder (and continues rank 0's MLflow run); rank 0 holds it.
    claimed = claim_run_dir(cfg, overrides) if rank == 0 else None
    start = broadcast_object(claimed[0] if claimed else None)
    try:
        return _train(cfg, device, rank, world, start)
    except KeyboardInterrupt:  # outside the training loop, which stops at an iteration's end itself
        ckpt = start.run_dir / CHECKPOINT_NAME
        hint = (f"resume with resume={start.run_dir}" if ckpt.is_file()
                else "no checkpoint yet, nothing to resume: run the same command again to start over")
        raise TrainingInterrupted(f"interrupted; {hint}", signal.SIGINT) from None
    except BaseException:
        if claimed:
            remove_if_never_started(start)
        raise
    finally:
        if claimed:
            claimed[1].release()


def remove_if_never_started(start: Start) -> None:
    """A new run that failed before it had an MLflow run (its teacher could not be downloaded, its
    method refused the teacher) leaves no folder behind: only its settings were written there."""
    if start.kind == "new" and not (start.run_dir / RECORD_NAME).exists():
        shutil.rmtree(start.run_dir, ignore_errors=True)


def _train(cfg: DictConfig, device: torch.device, rank: int, world: int, start: Start) -> RunResult:
    run_dir, run_id = start.run_dir, start.mlflow_run_id if start.kind == "resume" else None
    torch.manual_seed(cfg.trainer.seed)

    # One rank downloads and verifies the teacher into the cache; the others wait for it there (a
    # broadcast, i.e. a barrier), then every rank loads it from the cache.
    rank_zero_first(lambda: resolve_teacher_path(cfg.dataset.teacher))
    teacher = load_teacher(cfg.dataset.teacher, device)
    method = METHODS.get(cfg.method.name)(teacher, cfg.method, device, cfg)
    # said once the run can start (a run refused before it keeps its one line of error)
    warning = emulated_precision_warning(str(cfg.trainer.precision), device)
    if warning and rank == 0:
        console.print(warning, markup=False, soft_wrap=True)
    freq = label_frequencies(teacher.label_dim, cfg.dataset.get("label_freq"), cfg.dataset) if teacher.label_dim else None
    sampler = label_sampler(teacher.label_dim, freq, device) if freq is not None else None

    evaluator = None
    if cfg.eval.enabled:  # on every rank, each making its share of the images; rank 0 alone scores them
        from sidbench.eval.factory import build_metrics, final_only_metric_names, run_metric_names

        metrics, final = (run_metric_names(cfg), final_only_metric_names(cfg)) if rank == 0 else ([], [])
        evaluator = Evaluator(build_metrics(metrics, cfg), cfg.eval.num_samples, cfg.eval.batch_size,
                              teacher.shape, teacher.label_dim, device, cfg.eval.seed, cfg.eval.label_mode,
                              final_metrics=build_metrics(final, cfg), shared=True)
    card = cfg.dataset.teacher
    # a shipped teacher by name: its path differs from one install to the next
    teacher_name = f"builtin:{card.builtin}" if card.get("builtin") and not card.get("path") else teacher.source
    tags = {**run_tags(cfg), "teacher": teacher_name, "code_version": code_version(), "device": str(device),
            "world_size": str(world)}
    tracker = start_tracker(cfg, run_dir, tags, run_id, rank)
    if rank == 0 and run_id is None:
        record_mlflow_run(run_dir, tracker.run_id)  # known before the first checkpoint: a restart closes it
        tracker.log_artifact(run_dir / CONFIG_NAME)

    real_data = open_real_data(cfg, teacher.shape, teacher.label_dim, rank, device) if method.uses_real_data(cfg.method) else None
    trainer = Trainer(cfg.trainer, method, run_dir, device, evaluator, tracker, sampler, rank, world,
                      wrap_ddp(method.networks(), device), reference_metrics(cfg, teacher.info, teacher.source, rank), real_data)
    if start.kind == "resume" and trainer.resume():
        if trainer.budget.reached(trainer.progress.counters()) and (run_dir / GENERATOR_FILENAME).is_file():
            # A finished run started again: nothing to train, and its records stay as they are
            # (no second final evaluation, no headline without a metric).
            if rank == 0:
                console.print(f"{run_dir} already reached its budget at {trainer.progress.kimg:.1f} kimg; nothing to "
                              "train (a larger trainer.kimg or trainer.budget with resume= trains on)")
            tracker.finish()
            return RunResult(run_dir, trainer.progress, last_evaluation(run_dir), getattr(tracker, "run_id", None), rank,
                             trainer.reference_metrics)
        if rank == 0:
            console.print(f"resumed {run_dir} at {trainer.progress.kimg:.1f} kimg")
    try:
        progress = trainer.train()
    except (TrainingInterrupted, KeyboardInterrupt):
        finish_quietly(tracker, "KILLED")
        raise
    except TrackingStoreError as e:  # the store failed mid-run: the checkpoints are intact
        raise TrackingStoreError(f"{e}; {trainer.resume_hint()}") from None
    except BaseException:
        finish_quietly(tracker, "FAILED" if rank == 0 else "KILLED")
        raise
    # Training ends with all ranks at a barrier after rank 0's last checkpoint. The end's images are
    # made as the curve's are, by every rank; then the process group ends, and what follows (scoring
    # them included) is rank 0's alone.
    metrics = final_evaluation(cfg, trainer, evaluator, rank)
    if rank != 0:
        return RunResult(run_dir, progress, {}, None, rank)
    if trainer.stopped_by_time:
        tracker.set_tags({"stopped_by": "max_seconds"})
        console.print(f"stopped at the time budget trainer.max_seconds={cfg.trainer.max_seconds} after {progress.kimg:.1f} kimg")
    if evaluator is not None:
        # the size of the final evaluation: the leaderboard tells a protocol-size value from a proxy
        tracker.set_tags({"final_images": str(evaluator.num_samples)})
    gen_path = save_generator(trainer, method, run_dir, str(cfg.method.name))
    tracker.log_artifact(gen_path)
    tracker.set_tags(headline_tags(method, progress, metrics or trainer.last_metrics))
    tracker.finish()
    return RunResult(run_dir, progress, metrics, getattr(tracker, "run_id", None), teacher=trainer.reference_metrics)


def final_evaluation(cfg: DictConfig, trainer: Trainer, evaluator: Evaluator | None, rank: int) -> dict[str, float]:
    """The end's metrics, logged (on rank 0; {} on the others): at `eval.final_samples` images when
    that is not the curve's size, else the last evaluation's, with the end's own metrics
    (`eval.final_metrics`) scored on its images. Called on every rank while the process group runs;
    the group ends here, after the end's images are made and before rank 0 scores them.

    The ranks take the same branches (from the config, not from their metrics, which only rank 0
    holds), so the image rounds of a shared evaluator pair up. The group ends on every rank at the
    same point, right after the last round: NCCL's destroy waits for every rank (PyTorch finalizes
    the communicators), and rank 0's scoring of a 50k-image end could outlast any timeout."""
    from sidbench.eval.factory import final_only_metric_names

    resized = cfg.eval.final_samples != cfg.eval.num_samples
    if evaluator is None or not (resized or final_only_metric_names(cfg)):
        shutdown()
        return trainer.last_metrics if evaluator is not None and rank == 0 else {}
    # at the end's own size, every metric; else the end's own metrics on the last evaluation's images
    evaluator.num_samples = cfg.eval.final_samples
    start = time.perf_counter()
    images = evaluator.images(trainer.sample_fn)
    shutdown()
    if rank != 0:
        return {}
    metrics = evaluator.metrics + evaluator.final_metrics if resized else evaluator.final_metrics
    end = {f"{k}_final": v for k, v in evaluator.score(images, metrics, time.perf_counter() - start).items()}
    trainer.log(end)
    return end if resized else {**trainer.last_metrics, **end}


def last_evaluation(run_dir: Path) -> dict[str, float]:
    """The metric values of the last evaluation in the run's metrics.jsonl (none: {})."""
    path = run_dir / METRICS_NAME
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        values = {k: v for k, v in json.loads(line).items() if k.startswith("eval/") and not k.endswith("seconds_total")}
        if values:
            return values
    return {}


def finish_quietly(tracker: NullTracker, status: str) -> None:
    """Mark the MLflow run ended, unless the store itself is what failed (its error is already on its way)."""
    try:
        tracker.finish(status)
    except TrackingStoreError:
        pass


def headline_tags(method: Method, progress: Progress, metrics: dict[str, float]) -> dict[str, str]:
    """What MLflow's runs table shows of a finished run at a glance: its sampler's NFE, and one line
    with the final metric and the compute spent (also the run's description)."""
    shown = [f"{k.removeprefix('eval/')} {v:.4g}" for k, v in metrics.items() if not k.removesuffix("_final").endswith("seconds")]
    line = ", ".join([*shown, f"{progress.kimg:.1f} kimg", f"{progress.flops:.3g} FLOPs", f"{progress.passes:.3g} passes"])
    return {"nfe": str(int(method.sampling().get("nfe", 1))), "headline": line, "mlflow.note.content": line}


def save_generator(trainer: Trainer, method: Method, run_dir: Path, method_name: str) -> Path:
    """The EMA generator with everything needed to sample it: its constructor, weights, and the
    method's sampling recipe (with its NFE), all written by the method."""
    recipe = method.sampling()
    info = {"method": method_name, "kimg": trainer.progress.kimg, "sampling": recipe, "nfe": int(recipe.get("nfe", 1))}
    return save_native_teacher(trainer.ema.module, method.generator_constructor(), run_dir / GENERATOR_FILENAME, info)
