"""Learning-rate schedules as `torch.optim.lr_scheduler.LambdaLR` factors: linear warm-up, then
constant or annealed. The trainer steps every method's schedulers once per iteration (so a TTUR
generator that steps every 5th iteration still follows the iteration count, as DMD2 does), saves
them in checkpoints, and restarts them at a stage boundary that resets their optimiser.

`BudgetAnneal` is the run-level option on top of them (`trainer.lr_anneal`, off by default): a
factor of the budget's used fraction applied to every optimiser, whatever its method."""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

ANNEALING = ("constant", "linear", "cosine")


def annealed(shape: str, f: float, final: float) -> float:
    """The factor a fraction `f` in [0, 1] of the way from 1 down to `final`: linearly or along a
    half cosine."""
    s = 1 - f if shape == "linear" else 0.5 * (1 + math.cos(math.pi * f))
    return final + (1 - final) * s


@dataclass(frozen=True)
class WarmupAnneal:
    """The LR factor at iteration t: t / warmup during the warm-up (0 at the first step, as
    diffusers' `constant_with_warmup` that DMD2 uses), then 1, or annealed to `final` over
    `anneal_iterations` (linearly or along a half cosine). A dataclass, so it pickles."""

    warmup: int = 0
    anneal: str = "constant"
    anneal_iterations: int = 0
    final: float = 0.0

    def __post_init__(self) -> None:
        if self.anneal not in ANNEALING:
            raise ValueError(f"unknown LR annealing {self.anneal!r}; use one of {', '.join(ANNEALING)}")
        if self.warmup < 0 or self.anneal_iterations < 0:
            raise ValueError("LR warm-up and annealing lengths must be >= 0")

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return t / self.warmup
        if self.anneal == "constant" or self.anneal_iterations == 0:
            return 1.0
        return annealed(self.anneal, min((t - self.warmup) / self.anneal_iterations, 1.0), self.final)


def lr_schedule(optimizer: torch.optim.Optimizer, warmup: int = 0, anneal: str = "constant",
                anneal_iterations: int = 0, final: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler for `optimizer` with `WarmupAnneal`'s factors."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupAnneal(warmup, anneal, anneal_iterations, final))


def restart(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Back to the schedule's first iteration (its optimiser's state was reset too)."""
    scheduler.last_epoch = 0
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise TypeError(f"a stage can restart only closed-form LambdaLR schedules, not {type(scheduler).__name__}")
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(0)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


BUDGET_ANNEALING = ("none", "linear", "cosine")
#: the param-group key of an unscheduled optimiser's LR before the budget anneal (saved with it)
UNANNEALED = "lr_unannealed"


@dataclass(frozen=True)
class BudgetAnneal:
    """The LR factor at a used fraction of the run's budget: 1 until `start`, then down to `final`
    at the end of the budget, linearly or along a half cosine. Off (`none`) by default: SiD and
    most published distillation runs keep a constant LR (docs/speed.md measures what it buys)."""

    shape: str = "none"
    start: float = 0.5
    final: float = 0.1

    def __post_init__(self) -> None:
        if self.shape not in BUDGET_ANNEALING:
            raise ValueError(f"unknown LR anneal {self.shape!r}; use one of {', '.join(BUDGET_ANNEALING)}")
        if not (0 <= self.start < 1 and 0 <= self.final <= 1):
            raise ValueError(f"LR anneal start must be in [0, 1) and final in [0, 1], got {self.start} and {self.final}")

    @property
    def enabled(self) -> bool:
        return self.shape != "none"

    def __call__(self, fraction: float) -> float:
        if not self.enabled or fraction <= self.start:
            return 1.0
        return annealed(self.shape, min((fraction - self.start) / (1 - self.start), 1.0), self.final)


def apply_lr_factor(optimizers: Mapping[str, torch.optim.Optimizer], scheduled: Collection[str], factor: float) -> None:
    """Each optimiser's LR becomes its unannealed LR times `factor`, before an iteration. A scheduled
    optimiser's group holds its schedule's fresh LR then (the trainer steps the closed-form LambdaLR
    schedules after every iteration, from their base LRs, so factors never compound); an
    unscheduled one keeps its unannealed LR in the group under `UNANNEALED`, which its state dict
    saves, so a resumed run goes on from the same value."""
    for name, opt in optimizers.items():
        for group in opt.param_groups:
            base = group["lr"] if name in scheduled else group.setdefault(UNANNEALED, group["lr"])
            group["lr"] = base * factor
