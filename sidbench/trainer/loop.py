"""The one training loop, shared by every method. It knows no method by name.

It counts generator images seen, network passes and seconds; decides when to log, evaluate,
draw sample grids and checkpoint; and resumes exactly from its last checkpoint.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.data.real import RealImages
from sidbench.distributed import all_reduce_mean, barrier
from sidbench.eval.evaluator import Evaluator
from sidbench.methods.base import Method
from sidbench.trainer.checkpoint import load_checkpoint, save_atomic
from sidbench.trainer.context import StepContext
from sidbench.trainer.ema import EMA
from sidbench.trainer.progress import ProgressDisplay
from sidbench.tracking import NullTracker

CHECKPOINT_NAME = "checkpoint.pt"
#: Every logged line, also kept beside the checkpoint: readable without MLflow (one JSON object a
#: line, like EDM's stats.jsonl). A resumed run appends; readers keep the last line of a kimg.
METRICS_NAME = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses for too many iterations in a row."""


@dataclass
class Progress:
    images_seen: int = 0
    iteration: int = 0
    network_passes: float = 0.0
    seconds: float = 0.0
    eval_seconds: float = 0.0

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000


def crossed(before: int, after: int, every_kimg: float | None) -> bool:
    """Did images seen cross a multiple of `every_kimg` between two iterations?"""
    if not every_kimg or every_kimg <= 0:
        return False
    every = every_kimg * 1000
    return math.floor(after / every) > math.floor(before / every)


def crossed_point(before: int, after: int, kimg: float) -> bool:
    """Did images seen pass the point `kimg` between two iterations?"""
    return before < kimg * 1000 <= after


class Trainer:
    def __init__(
        self,
        cfg: DictConfig,
        method: Method,
        run_dir: Path,
        device: torch.device,
        evaluator: Evaluator | None = None,
        tracker: NullTracker | None = None,
        label_sampler: Callable[[int], torch.Tensor | None] | None = None,
        rank: int = 0,
        world_size: int = 1,
        wrapped: dict[str, torch.nn.Module] | None = None,
        reference_metrics: dict[str, float] | None = None,
        real_data: RealImages | None = None,
    ) -> None:
        self.cfg = cfg  # the `trainer` group
        self.method = method
        self.run_dir = run_dir
        self.device = device
        self.evaluator = evaluator
        self.tracker = tracker or NullTracker()
        self.rank = rank
        self.world_size = world_size
        self.reference_metrics = reference_metrics or {}
        if cfg.batch % world_size:
            raise ValueError(f"trainer.batch={cfg.batch} is not divisible by the {world_size} processes; pick a multiple")
        generator = method.networks()[method.generator_name]
        self.ema = EMA(generator, cfg.ema_halflife_kimg, cfg.ema_rampup)
        self.ctx = StepContext(
            method.networks(), method.optimizers(), device,
            batch=cfg.batch // world_size, batch_gpu=cfg.get("batch_gpu"), precision=cfg.precision,
            label_sampler=label_sampler, wrapped=wrapped, seed=cfg.seed, rank=rank, world_size=world_size,
            real_data=real_data,
        )
        self.progress = Progress()
        self.checkpoint_path = run_dir / CHECKPOINT_NAME
        self.last_good_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.stopped_by_time = False

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "networks": {k: v.state_dict() for k, v in self.method.networks().items()},
            "optimizers": {k: v.state_dict() for k, v in self.method.optimizers().items()},
            "ema": self.ema.state_dict(),
            "method": self.method.state_dict(),
            "progress": asdict(self.progress),
            "rng_cpu": torch.get_rng_state(),
            "mlflow_run_id": getattr(self.tracker, "run_id", None) or "",
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, net in self.method.networks().items():
            net.load_state_dict(state["networks"][k])
        for k, opt in self.method.optimizers().items():
            opt.load_state_dict(state["optimizers"][k])
        self.ema.load_state_dict(state["ema"])
        self.method.load_state_dict(state["method"])
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["rng_cpu"])

    def resume(self, path: Path | None = None) -> bool:
        path = path or self.checkpoint_path
        if not path.is_file():
            return False
        self.load_state_dict(load_checkpoint(path))
        self.last_good_checkpoint = path
        return True

    def save_checkpoint(self) -> None:
        if self.rank == 0:
            save_atomic(self.state_dict(), self.checkpoint_path)
            self.last_good_checkpoint = self.checkpoint_path

    # -- evaluation ----------------------------------------------------------------------------
    def sample_fn(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with self.ctx.autocast():
            return self.method.sample(self.ema.module, z, labels)

    def evaluate(self) -> dict[str, float]:
        """Rank 0 evaluates; the other ranks wait for it at a barrier. Every rank calls this at the
        same iterations (the schedule depends only on images seen), so the barriers pair up."""
        out = self._evaluate() if self.rank == 0 else {}
        barrier()
        return out

    def _evaluate(self) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        out = self.evaluator(self.sample_fn)
        self.progress.eval_seconds += out.get("eval/seconds", 0.0)
        self.last_metrics = out
        if self.cfg.get("sample_grids", True):
            grid = self.evaluator.sample_grid(self.sample_fn, self.run_dir / "samples" / f"kimg{self.progress.kimg:09.3f}.png")
            self.tracker.log_artifact(grid, "samples")
        return out

    def log(self, metrics: dict[str, float]) -> None:
        p = self.progress
        # `seconds` counts training only; evaluation time is its own line (each evaluation's
        # `eval/seconds`, and the running total here).
        line = {**metrics, "kimg": p.kimg, "network_passes": p.network_passes, "seconds": p.seconds,
                "eval/seconds_total": p.eval_seconds}
        self.tracker.log_metrics(line, step=int(p.kimg))
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(line) + "\n")

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> Progress:
        cfg, p = self.cfg, self.progress
        total_images = int(round(cfg.kimg * 1000))
        passes_per_iteration = self.method.passes_per_sample * cfg.batch
        display = ProgressDisplay(total_images, enabled=self.rank == 0, start=p.images_seen)
        if p.iteration == 0:
            self.log({**{f"teacher/{k}": v for k, v in self.reference_metrics.items()}, **self.evaluate()})
        nonfinite = 0
        sums: dict[str, float] = {}
        count = 0
        max_seconds = cfg.get("max_seconds")
        done = p.images_seen >= total_images
        with display:
            while not done:
                t0 = time.perf_counter()
                self.ctx.iteration = p.iteration
                # The mean over ranks: logs describe the global batch, and every rank takes the
                # same decision on non-finite losses (a lone rank stopping would hang the others).
                losses = all_reduce_mean(self.method.train_step(self.ctx), self.device)
                before = p.images_seen
                p.images_seen += cfg.batch
                p.iteration += 1
                p.network_passes += passes_per_iteration
                self.ema.update(self.method.networks()[self.method.generator_name], cfg.batch, p.images_seen)
                p.seconds += time.perf_counter() - t0

                if all(math.isfinite(v) for v in losses.values()):
                    nonfinite = 0
                else:
                    nonfinite += 1
                    if nonfinite >= cfg.max_nonfinite:
                        self._stop_nonfinite(losses, nonfinite)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                # A wall-clock budget (training plus evaluation) ends the run early, like reaching kimg.
                if max_seconds:
                    over = p.seconds + p.eval_seconds >= max_seconds
                    # Ranks' clocks differ: stop when any rank is over, so that all stop together.
                    self.stopped_by_time = all_reduce_mean({"over": float(over)}, self.device)["over"] > 0
                done = p.images_seen >= total_images or self.stopped_by_time

                metrics: dict[str, float] = {}
                if crossed(before, p.images_seen, cfg.tick_kimg) or done:
                    metrics.update({f"loss/{k}": v / count for k, v in sums.items()})
                    sums, count = {}, 0
                if crossed(before, p.images_seen, cfg.eval_every_kimg) or any(
                        crossed_point(before, p.images_seen, k) for k in cfg.get("eval_at_kimg") or []) or done:
                    metrics.update(self.evaluate())
                if metrics:
                    metrics["sec_per_kimg"] = p.seconds / max(p.kimg, 1e-9)
                    self.log(metrics)
                display.update(p.images_seen, p.seconds, {**losses, **{k: v for k, v in metrics.items() if k.startswith("eval/")}})
                if nonfinite == 0 and (crossed(before, p.images_seen, cfg.checkpoint_every_kimg) or done):
                    self.save_checkpoint()
        barrier()  # no rank leaves before rank 0's last checkpoint is on disk
        return p

    def _stop_nonfinite(self, losses: dict[str, float], streak: int) -> None:
        bad = ", ".join(k for k, v in losses.items() if not math.isfinite(v))
        where = (f"the last good checkpoint is {self.last_good_checkpoint} (resume=<run dir> continues from it)"
                 if self.last_good_checkpoint else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"loss {bad} was non-finite for {streak} iterations in a row at kimg {self.progress.kimg:.1f}; "
            f"{where}; lower the learning rate or switch trainer.precision to fp32"
        )
