"""The one training loop, shared by every method. It knows no method by name.

It counts generator images seen, compute (network passes and FLOPs, measured by
`sidbench.trainer.compute`) and seconds; ends the run at its budget; enters the method's stages;
steps the LR schedules; decides when to log, evaluate, draw sample grids and checkpoint; and
resumes exactly from its last checkpoint, across stage boundaries too.
"""
from __future__ import annotations


import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.data.loader import RealImageLoader
from sidbench.data.real import RealImages
from sidbench.distributed import barrier, reduce_values
from sidbench.errors import UserError
from sidbench.eval.evaluator import Evaluator
from sidbench.methods.base import Method, Stage
from sidbench.run_folder import CHECKPOINT_NAME, METRICS_NAME
from sidbench.trainer.budget import Budget, crossed_fractions, log_fractions
from sidbench.trainer.checkpoint import load_checkpoint, save_atomic
from sidbench.trainer.compute import ComputeCounter
from sidbench.trainer.context import StepContext
from sidbench.trainer.ema import EMA
from sidbench.trainer.interrupt import TrainingInterrupted, stop_requests
from sidbench.trainer.progress import Progress, ProgressDisplay
from sidbench.trainer.schedule import BudgetAnneal, apply_lr_factor, restart
from sidbench.trainer.speed import (compile_networks, compile_seconds, compiles_step, marks_cuda_graph_steps, require_compiler,
                                    set_edm_fp16, set_optimizer_kernel, to_channels_last)
from sidbench.trainer.tally import DeviceTally
from sidbench.tracking import NullTracker

# METRICS_NAME: every logged line, also kept beside the checkpoint: readable without MLflow (one
# JSON object a line, like EDM's stats.jsonl). A resumed run appends; readers keep the last line of a kimg.
CHECKPOINT_FORMAT = 2


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced non-finite losses for too many iterations in a row."""


def crossed(before: int, after: int, every_kimg: float | None) -> bool:
    """Did images seen cross a multiple of `every_kimg` between two iterations?"""
    if not every_kimg or every_kimg <= 0:
        return False
    every = every_kimg * 1000
    return math.floor(after / every) > math.floor(before / every)


def crossed_point(before: int, after: int, kimg: float) -> bool:
    """Did images seen pass the point `kimg` between two iterations?"""
    return before < kimg * 1000 <= after


def budget_of(cfg: DictConfig) -> Budget:
    """`trainer.kimg`, when set, is the shorthand for a budget of that many kimg; else
    `trainer.budget` ({unit, value})."""
    if cfg.get("kimg") is not None:
        return Budget("kimg", float(cfg.kimg))
    return Budget(str(cfg.budget.unit), float(cfg.budget.value))


def stage_index(stages: list[Stage], images_seen: int, iteration: int) -> int:
    """The last stage whose start has been reached."""
    index = 0
    for i, st in enumerate(stages):
        reached = images_seen >= st.start * 1000 if st.unit == "kimg" else iteration >= st.start
        if reached:
            index = i
    return index


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
        real_data: RealImages | RealImageLoader | None = None,
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
        self.real_data = real_data
        if cfg.batch % world_size:
            raise ValueError(f"trainer.batch={cfg.batch} is not divisible by the {world_size} processes; pick a multiple")
        self.budget = budget_of(cfg)
        self.lr_anneal = BudgetAnneal(**dict(cfg.get("lr_anneal") or {}))  # off where the config has none
        self.lr_factor = 1.0  # the anneal's factor in the last iteration
        if self.lr_anneal.enabled:
            chained = [k for k, sched in method.schedulers().items() if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR)]
            if chained:  # a chainable scheduler would multiply the factor into itself every iteration
                raise TypeError(f"trainer.lr_anneal needs closed-form LambdaLR schedules; {chained} are not "
                                "(build them with sidbench.trainer.schedule.lr_schedule)")
        self.stages = method.stages()
        generator = method.networks()[method.generator_name]
        self.ema = EMA(generator, cfg.ema_halflife_kimg, cfg.ema_rampup, beta=cfg.get("ema_beta"))
        self.counter = ComputeCounter(count_flops=bool(cfg.get("count_flops", True)))
        self.compile_mode = str(cfg.get("compile_mode") or "default")
        self.mark_graph_steps = marks_cuda_graph_steps(bool(cfg.get("compile")), self.compile_mode, device)
        # anything compiled (networks, or an optimiser's step: RAdam's on CUDA): its compile time is logged apart
        self.optimizer_kernel = str(cfg.get("optimizer_kernel") or "as_built")
        self.compiles = bool(cfg.get("compile")) or any(compiles_step(o, self.optimizer_kernel) for o in method.optimizers().values())
        if self.compiles:
            require_compiler(device)
        self.ctx = StepContext(
            method.networks(), method.optimizers(), device,
            batch=cfg.batch // world_size, batch_gpu=cfg.get("batch_gpu"), precision=cfg.precision,
            label_sampler=label_sampler, wrapped=wrapped, seed=cfg.seed, rank=rank, world_size=world_size,
            real_data=real_data, counter=self.counter,
        )
        self._attach_counter()
        self.progress = Progress()
        self.checkpoint_path = run_dir / CHECKPOINT_NAME
        self.last_good_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.stopped_by_time = False
        log = cfg.get("eval_log_points") or {}
        self.eval_fractions = sorted({*map(float, cfg.get("eval_at_fraction") or []),
                                      *log_fractions(int(log.get("count", 0) or 0), float(log.get("first", 0.01)))})

    def _attach_counter(self) -> None:
        """Count the method's networks, and apply the speed options to them and to its optimisers
        (again whenever they may have changed: a stage entry, a resumed state)."""
        m = self.method
        nets = {**m.frozen_networks(), **{k: a.module for k, a in m.averages().items()}, **m.networks()}
        self.counter.attach(nets)
        set_optimizer_kernel(m.optimizers().values(), self.optimizer_kernel)
        if self.cfg.get("edm_fp16"):
            set_edm_fp16([*nets.values(), self.ema.module], True)
        if self.cfg.get("channels_last"):
            to_channels_last([*nets.values(), self.ema.module])
        if self.cfg.get("compile"):
            compile_networks(nets.values(), self.compile_mode)

    def _own_frozen(self) -> dict[str, torch.nn.Module]:
        """Frozen networks that are not the loaded teacher (a promoted student): checkpointed."""
        return {k: v for k, v in self.method.frozen_networks().items() if v is not self.method.teacher.net}

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        m = self.method
        return {
            "format": CHECKPOINT_FORMAT,
            "networks": {k: v.state_dict() for k, v in m.networks().items()},
            "optimizers": {k: v.state_dict() for k, v in m.optimizers().items()},
            "schedulers": {k: v.state_dict() for k, v in m.schedulers().items()},
            "frozen": {k: v.state_dict() for k, v in self._own_frozen().items()},
            "averages": {k: v.state_dict() for k, v in m.averages().items()},
            "ema": self.ema.state_dict(),
            "counter": self.counter.state_dict(),
            "method": m.state_dict(),
            "progress": asdict(self.progress),
            "rng_cpu": torch.get_rng_state(),
            "mlflow_run_id": getattr(self.tracker, "run_id", None) or "",
            # a loader's position in its stream of real images (images drawn in memory have none)
            "real_data": self.real_data.state_dict() if hasattr(self.real_data, "state_dict") else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m = self.method
        # The method's own state first: it may rebuild networks for the stage it was in.
        m.load_state_dict(state["method"])
        for k, net in m.networks().items():
            net.load_state_dict(state["networks"][k])
        for k, opt in m.optimizers().items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sched in m.schedulers().items():
            sched.load_state_dict(state.get("schedulers", {})[k])
        for k, net in self._own_frozen().items():
            net.load_state_dict(state["frozen"][k])
        for k, avg in m.averages().items():
            avg.load_state_dict(state["averages"][k])
        self.ema.load_state_dict(state["ema"])
        if "counter" in state:
            self.counter.load_state_dict(state["counter"])
        known = {f.name for f in fields(Progress)}
        self.progress = Progress(**{k: v for k, v in state["progress"].items() if k in known})
        torch.set_rng_state(state["rng_cpu"])
        if state.get("real_data") and hasattr(self.real_data, "load_state_dict"):
            self.real_data.load_state_dict(state["real_data"])
        self._attach_counter()

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
        """Rank 0 evaluates; with a shared evaluator (`sidbench run` builds one on every rank) every
        rank makes its share of the images for it. The other ranks then wait for rank 0 at a
        barrier. Every rank calls this at the same iterations (the schedule depends only on global
        counters), so the collectives and barriers pair up."""
        out = self._evaluate()
        barrier()
        return out

    def _evaluate(self) -> dict[str, float]:
        if self.evaluator is None or (self.rank != 0 and not self.evaluator.shared):
            return {}
        out = self.evaluator(self.sample_fn)
        if self.rank != 0:
            return {}
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
        line = {**metrics, "kimg": p.kimg, "compute/passes": p.passes, "compute/teacher_passes": p.teacher_passes,
                "compute/flops": p.flops, "budget/fraction": self.budget.fraction(p.counters()),
                "seconds": p.seconds, "eval/seconds_total": p.eval_seconds}
        if self.compiles:  # included in `seconds` (the first calls compile), and apart here
            line["compile_seconds"] = compile_seconds()
        # step = images seen: unique per line (several evaluations can fall in one kimg early on)
        # and the same axis for every method, so MLflow's charts line runs up by images.
        self.tracker.log_metrics(line, step=p.images_seen)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(line) + "\n")

    # -- stages --------------------------------------------------------------------------------
    def _enter_stages(self) -> dict[str, float]:
        """Enter every stage whose start was reached since the last iteration, in order."""
        p = self.progress
        target = stage_index(self.stages, p.images_seen, p.iteration)
        entered = target != p.stage
        while p.stage < target:
            p.stage += 1
            st = self.stages[p.stage]
            schedulers = self.method.schedulers()
            for name in st.reset_optimizers:
                self.method.optimizers()[name].state.clear()
                if name in schedulers:
                    restart(schedulers[name])
            if st.reset_ema:
                self.ema.reset(self.method.networks()[self.method.generator_name])
            self.method.enter_stage(p.stage, st)
        if entered:
            self._attach_counter()
            self.tracker.set_tags({"stage": self.stages[p.stage].name})
        return {"train/stage": float(p.stage)} if entered else {}

    # -- the loop ------------------------------------------------------------------------------
    def step(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """One iteration as training runs it: the method's updates under the compute counter, the LR
        schedules' step and the generator's EMA step. Returns (losses, values the method logged
        through the context). It advances no counter of `progress`: `train` does that around it
        (and benchmarks/real_size.py, which times iterations at real size without a run)."""
        self.ctx.iteration = self.progress.iteration
        if self.mark_graph_steps:  # the last iteration's graph outputs may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if self.lr_anneal.enabled:  # from the budget used before this iteration
            self.lr_factor = self.lr_anneal(self.budget.fraction(self.progress.counters()))
            apply_lr_factor(self.method.optimizers(), self.method.schedulers(), self.lr_factor)
        with self.counter.iteration():
            losses = self.method.train_step(self.ctx)
        for sched in self.method.schedulers().values():
            sched.step()
        logged = self.ctx.take_logs()
        # the EMA's ramp-up reads the images seen before this batch, as EDM and SiD do
        self.ema.update(self.method.networks()[self.method.generator_name], self.cfg.batch, self.progress.images_seen)
        return losses, logged

    def train(self) -> Progress:
        cfg, p = self.cfg, self.progress
        display = ProgressDisplay(self.budget, enabled=self.rank == 0, start=self.budget.used(p.counters()))
        # The contract: prepare() runs before the first iteration of every run, fresh or resumed,
        # so a method builds its state one way. Its work is charged once: a resumed run's counters
        # already hold it, so what the call costs again (e.g. reloading cached samples) is dropped.
        with self.ctx.precompute():
            self.method.prepare(self.ctx)
        _, cost = reduce_values({}, asdict(self.counter.take()), self.device)
        if p.iteration == 0:
            p.passes, p.teacher_passes, p.flops = cost["passes"], cost["teacher_passes"], cost["flops"]
            self.log({**{f"teacher/{k}": v for k, v in self.reference_metrics.items()}, **self.evaluate(),
                      "train/stage": float(p.stage)})
        tally = DeviceTally(self.device)
        nonfinite = 0  # the streak of non-finite iterations, as of the last reading
        shown: dict[str, float] = {}  # the losses on the progress line, as of the last reading
        waited = 0.0  # the last reading's wait for the device, charged to the next iteration's time
        max_seconds = cfg.get("max_seconds")
        done = self.budget.reached(p.counters())
        with display, stop_requests() as stop:
            while not done:
                stage_logs = self._enter_stages()
                before, fraction_before = p.images_seen, self.budget.fraction(p.counters())
                t0 = time.perf_counter()
                losses, logged = self.step()
                tally.add(losses, logged)  # on the device: nothing waits for the iteration's kernels
                elapsed = time.perf_counter() - t0 + waited
                over = bool(max_seconds) and p.seconds + elapsed + p.eval_seconds >= max_seconds
                host = {**asdict(self.counter.take()), "_over": float(over), "_stop": float(stop.signum or 0)}
                if self.world_size > 1:
                    # One collective of host values per iteration: the sum of the compute, the time
                    # (mean: the ranks stay in step), any rank's stop request or time cap.
                    means, totals = reduce_values({"_seconds": elapsed}, host, self.device)
                else:
                    means, totals = {"_seconds": elapsed}, host
                p.images_seen += cfg.batch
                p.iteration += 1
                p.passes += totals["passes"]
                p.teacher_passes += totals["teacher_passes"]
                p.flops += totals["flops"]
                p.seconds += means.pop("_seconds")
                # A wall-clock cap (training plus evaluation); any rank over it stops them all.
                self.stopped_by_time = totals["_over"] > 0
                done = self.budget.reached(p.counters()) or self.stopped_by_time
                tick = crossed(before, p.images_seen, cfg.tick_kimg) or done
                checkpoint = crossed(before, p.images_seen, cfg.checkpoint_every_kimg) or done

                # Device values (losses, logged values, the non-finite streak) are read only where a
                # decision needs them: a tick, a checkpoint, a stop request, the end, and every
                # `max_nonfinite` iterations (a failing run stops at most that many iterations late).
                reading, waited = None, 0.0
                if tick or checkpoint or totals["_stop"] > 0 or p.iteration % cfg.max_nonfinite == 0:
                    r0 = time.perf_counter()
                    reading = tally.read(tick=tick)
                    waited = time.perf_counter() - r0
                    nonfinite, shown = reading.streak, reading.last_losses
                    if nonfinite >= cfg.max_nonfinite:
                        self._stop_nonfinite(shown, nonfinite)
                if totals["_stop"] > 0:  # asked to stop (any rank): checkpoint this iteration, together
                    self._stop_requested(stop.signum or signal.SIGTERM, good=nonfinite == 0)
                if done:  # iterations of a kind never measured: charged at an estimate, once
                    self.counter.finish()
                    p.flops += reduce_values({}, {"flops": self.counter.take().flops}, self.device)[1]["flops"]

                metrics: dict[str, float] = dict(stage_logs)
                if reading is not None:
                    metrics.update(reading.means)
                if reading is not None and reading.means and self.lr_anneal.enabled:
                    metrics["train/lr_factor"] = self.lr_factor
                fraction = self.budget.fraction(p.counters())
                if (crossed(before, p.images_seen, cfg.eval_every_kimg)
                        or any(crossed_point(before, p.images_seen, k) for k in cfg.get("eval_at_kimg") or [])
                        or crossed_fractions(fraction_before, fraction, self.eval_fractions) or done):
                    metrics.update(self.evaluate())
                if metrics:
                    metrics["sec_per_kimg"] = p.seconds / max(p.kimg, 1e-9)
                    self.log(metrics)
                display.update(p, {k.removeprefix("loss/"): v for k, v in shown.items()},
                               {k: v for k, v in metrics.items() if k.startswith("eval/")})
                if nonfinite == 0 and checkpoint:
                    self.save_checkpoint()
        barrier()  # no rank leaves before rank 0's last checkpoint is on disk
        return p

    def _stop_requested(self, signum: int, good: bool) -> None:
        """End the run at this iteration: a checkpoint (unless its losses were non-finite), every rank
        waits for it, then `TrainingInterrupted` with what can be resumed."""
        if good:
            self.save_checkpoint()
        barrier()
        raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} at {self.progress.kimg:.1f} kimg; "
                                  f"{self.resume_hint()}", signum)

    def resume_hint(self) -> str:
        """Where a run that stops now can be continued from, in words."""
        if self.last_good_checkpoint is None:
            return "no checkpoint was written yet, nothing to resume: run the same command again to start over"
        return f"the last checkpoint is {self.last_good_checkpoint}: resume with resume={self.run_dir}"

    def _stop_nonfinite(self, losses: dict[str, float], streak: int) -> None:
        bad = ", ".join(k.removeprefix("loss/") for k, v in losses.items() if not math.isfinite(v))
        raise NonFiniteLossError(
            f"loss {bad} was non-finite for {streak} iterations in a row at kimg {self.progress.kimg:.1f}; "
            f"lower the learning rate or switch trainer.precision to fp32; {self.resume_hint()}"
        )
