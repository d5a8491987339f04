"""`sidbench run`: config -> teacher -> method -> trainer (-> evaluation, tracking)."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from sidbench.distributed import init_from_env, local_rank, pick_device, wrap_ddp
from sidbench.eval.evaluator import Evaluator
from sidbench.labels import label_frequencies, label_sampler
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher, save_native_teacher
from sidbench.tracking import code_version, find_run_dir, start_tracker, tracking_uri
from sidbench.trainer.checkpoint import load_checkpoint
from sidbench.trainer.loop import CHECKPOINT_NAME, Progress, Trainer

console = Console(stderr=True)


@dataclass
class RunResult:
    run_dir: Path
    progress: Progress
    metrics: dict[str, float]
    mlflow_run_id: str | None


def dry_run(cfg: DictConfig) -> str:
    """The resolved config and the networks each method would build; loads nothing."""
    teacher = OmegaConf.to_container(cfg.dataset.teacher.constructor, resolve=True)
    student = dict(teacher)
    if cfg.method.get("dropout") is not None:
        student["dropout"] = cfg.method.dropout
    nets = {"teacher": teacher, "generator": student, "fake_score": student}
    return OmegaConf.to_yaml(cfg) + "\n# network constructors\n" + json.dumps(nets, indent=2)


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, str | None]:
    """(run folder, MLflow run id to continue or None) for a new or resumed run."""
    if cfg.resume:
        path = Path(str(cfg.resume))
        if not path.is_dir():  # not a folder: an MLflow run id
            path = find_run_dir(str(cfg.resume), tracking_uri(cfg))
        ckpt = path / CHECKPOINT_NAME
        run_id = load_checkpoint(ckpt).get("mlflow_run_id") or None if ckpt.is_file() else None
        return path, run_id
    name = cfg.run_name or f"{cfg.method.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.output_root) / str(cfg.dataset.name) / name, None


def reference_metrics(cfg: DictConfig, info: dict[str, Any]) -> dict[str, float]:
    """The teacher's own value of the run's metric: measured and stored with its weights, or the
    published figure (logged under a `_published` suffix so nobody mistakes it for a measurement)."""
    metric = str(cfg.eval.metric)
    measured = (info.get("metrics") or {}).get(metric)
    if measured is not None:
        return {metric: float(measured)}
    published = (info.get("published") or {}).get(metric)
    return {f"{metric}_published": float(published)} if published is not None else {}


def run(cfg: DictConfig) -> RunResult:
    device = pick_device(cfg.device, local_rank())
    rank, world = init_from_env(device)
    run_dir, run_id = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    torch.manual_seed(cfg.trainer.seed)

    teacher = load_teacher(cfg.dataset.teacher, device)
    method = METHODS.get(cfg.method.name)(teacher, cfg.method, device, cfg)
    freq = label_frequencies(teacher.label_dim, cfg.dataset.get("label_freq"), str(cfg.dataset.name)) if teacher.label_dim else None
    sampler = label_sampler(teacher.label_dim, freq, device) if freq is not None else None

    evaluator = None
    if cfg.eval.enabled and rank == 0:
        from sidbench.eval.factory import build_metric

        evaluator = Evaluator(build_metric(str(cfg.eval.metric), cfg), cfg.eval.num_samples, cfg.eval.batch_size,
                              teacher.shape, teacher.label_dim, device, cfg.eval.seed, cfg.eval.label_mode)
    tags = {"method": str(cfg.method.name), "dataset": str(cfg.dataset.name), "teacher": teacher.source,
            "seed": str(cfg.trainer.seed), "code_version": code_version(), "device": str(device), "world_size": str(world)}
    tracker = start_tracker(cfg, run_dir, tags, run_id, rank)
    if rank == 0 and run_id is None:
        tracker.log_artifact(run_dir / "config.yaml")

    trainer = Trainer(cfg.trainer, method, run_dir, device, evaluator, tracker, sampler, rank, world,
                      wrap_ddp(method.networks(), device), reference_metrics(cfg, teacher.info))
    if trainer.resume() and rank == 0:
        console.print(f"resumed {run_dir} at {trainer.progress.kimg:.1f} kimg")
    try:
        progress = trainer.train()
    except BaseException:
        tracker.finish("FAILED" if rank == 0 else "KILLED")
        raise
    metrics: dict[str, float] = {}
    if evaluator is not None:
        if cfg.eval.final_samples != cfg.eval.num_samples:
            evaluator.num_samples = cfg.eval.final_samples
            metrics = {f"{k}_final": v for k, v in evaluator(trainer.sample_fn).items()}
            tracker.log_metrics(metrics, step=int(progress.kimg))
        else:
            metrics = trainer.last_metrics
    if rank == 0:
        gen_path = save_native_teacher(trainer.ema.module, method.describe_networks().get("generator", teacher.constructor),
                                       run_dir / "generator.safetensors",
                                       {"method": str(cfg.method.name), "kimg": progress.kimg, "sampling": {"sigma_init": cfg.method.get("sigma_init")}})
        tracker.log_artifact(gen_path)
        tracker.finish()
    return RunResult(run_dir, progress, metrics, getattr(tracker, "run_id", None))
