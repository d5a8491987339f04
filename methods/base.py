"""The method contract: what a distillation method receives and what it provides.

A method owns its networks and optimisers and knows how to run ONE iteration. It never writes a
loop, a checkpoint or a log line: the trainer does that for every method alike. Inside an
iteration the method asks the trainer's `StepContext` to run each update (micro-batches,
precision, loss scaling, gradient sanitising and clipping, one or several optimiser steps) and
returns its losses. What an iteration costs is counted by the context from the network calls it
makes; a method declares no cost.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig

from sidbench import diffusion
from sidbench.methods import METHODS, register_method
from sidbench.samplers import SAMPLERS, register_sampler

if TYPE_CHECKING:
    from sidbench.teachers.teacher import Teacher
    from sidbench.trainer.context import StepContext
    from sidbench.trainer.ema import EMA

#: A sampling recipe: JSON-able, e.g. {"sampler": "one_step", "sigmas": [2.5], "nfe": 1}: a sampler
#: registered by name (`sidbench.samplers`), its arguments, its NFE. A saved generator carries it,
#: and every reader samples it through `sidbench.diffusion.sample`.
Recipe = dict[str, Any]

STAGE_UNITS = ("kimg", "iterations")


@dataclass(frozen=True)
class Stage:
    """A part of a run that starts at `start` (generator kimg seen, or iterations). On entering
    it the trainer resets the named optimisers' state (and restarts their LR schedules), resets
    the generator's EMA if asked, and then calls the method's `enter_stage` for the rest (a
    student that becomes the teacher, a step count that halves)."""

    name: str
    start: float = 0.0
    unit: str = "kimg"
    reset_optimizers: tuple[str, ...] = ()
    reset_ema: bool = False

    def __post_init__(self) -> None:
        if self.unit not in STAGE_UNITS:
            raise ValueError(f"stage {self.name!r}: unknown unit {self.unit!r}; use one of {', '.join(STAGE_UNITS)}")


class Method(ABC):
    """Base class of every distillation method.

    Receives: the loaded `teacher` (a frozen EDM denoiser plus its card), the method's config
    (`cfg.method`, the whole resolved config is in `full_cfg`) and the device.
    Provides (required):
      - `networks()`: the trainable networks by name (checkpointed, wrapped in DDP, the one named
        `generator_name` averaged by the trainer's EMA); `optimizers()`: one per network, same name;
      - `train_step(ctx)`: one iteration through `ctx.update(...)`; returns `{loss_name: value}`;
      - `sampling()`: the generator's current sampling recipe (a registered sampler, its
        arguments and its `nfe`); a generator no built-in sampler fits comes with one of its own
        (`@register_sampler(name)`, `sidbench.samplers`).
    May provide: `schedulers()` (LR schedules, stepped once per iteration), `frozen_networks()`
    (networks called but not trained: counted, and checkpointed unless it is the loaded teacher),
    `averages()` (EMA copies of its own), `stages()` and `enter_stage()`, `prepare(ctx)` (work
    before the first iteration of a fresh or resumed run, charged once), `plan_networks()` (for the dry run
    and the saved generator's constructor), `state_dict()` for any other state.
    Its settings (`cfg.method`) are one dataclass, `settings` (see `sidbench.schema.setting`).
    A method that trains on real images too (SiDA, progressive distillation's data mode) says so
    in `uses_real_data(cfg)`; the run then opens the dataset's images and `ctx.real(n)` draws them.
    """

    #: one-line description shown by `sidbench list`
    description: ClassVar[str] = ""
    generator_name: ClassVar[str] = "generator"
    #: the method's settings: a dataclass of `sidbench.schema.setting(default, doc=..., bounds)`
    #: fields. Its defaults are the config `method=<name>` (presets override them); `cfg.method`
    #: is checked against its types and bounds, and by its classmethod `check(cfg)` if it has
    #: one, before a run starts (a bad value is one line, exit code 2). None: no settings.
    settings: ClassVar[type | None] = None

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        self.teacher = teacher
        self.cfg = cfg
        self.device = device
        self.full_cfg = full_cfg

    # -- required ------------------------------------------------------------------------------
    @abstractmethod
    def networks(self) -> dict[str, torch.nn.Module]:
        """Trainable networks by name."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per trained network, keyed by the network's name."""

    @abstractmethod
    def train_step(self, ctx: StepContext) -> dict[str, torch.Tensor | float]:
        """Run one iteration through `ctx.update(...)`; return the losses to log."""

    @abstractmethod
    def sampling(self) -> Recipe:
        """The recipe that turns noise into images with the generator, as it stands now."""

    # -- optional ------------------------------------------------------------------------------
    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """LR schedules by optimiser name (see `sidbench.trainer.schedule.lr_schedule`)."""
        return {}

    def frozen_networks(self) -> dict[str, torch.nn.Module]:
        """Networks called in training without being trained. The one named "teacher" is also
        counted on its own (`compute/teacher_passes`)."""
        return {"teacher": self.teacher.net}

    def averages(self) -> dict[str, EMA]:
        """EMA copies the method keeps and updates itself (e.g. a consistency target network)."""
        return {}

    def stages(self) -> list[Stage]:
        """The run's stages in order; the first starts at 0."""
        return [Stage("main")]

    def enter_stage(self, index: int, stage: Stage) -> None:
        """Called when the run enters `stages()[index]` (after the trainer's resets; never for
        stage 0 at the start, and never again on resume)."""

    def prepare(self, ctx: StepContext) -> None:
        """Work before the first iteration, on a fresh run and on a resumed one alike (after
        `load_state_dict`), e.g. making or loading teacher samples. The trainer calls it inside
        `ctx.precompute()`: on a fresh run every network call and `ctx.counter.charge` is charged
        to the run's compute; on a resume the checkpoint's counters already hold that charge, so
        the trainer drops what the call costs again. State that only this work rebuilds therefore
        needs no checkpoint and no lazy rebuild in `train_step`."""

    @classmethod
    def uses_real_data(cls, cfg: DictConfig) -> bool:
        """Whether a run with method settings `cfg` trains on real images (draws them with
        `ctx.real(n)`): asked before the run starts, so a dataset without them is one line, not a
        failure after the teacher loaded, and by the run, which then opens them."""
        return False

    @classmethod
    def plan_networks(cls, cfg: DictConfig, teacher_constructor: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Constructor of each network the method would build, without building any (dry run;
        the saved generator's constructor). Default: every network is a copy of the teacher."""
        return {"teacher": dict(teacher_constructor), cls.generator_name: dict(teacher_constructor)}

    def generator_constructor(self) -> dict[str, Any]:
        return self.plan_networks(self.cfg, self.teacher.constructor)[self.generator_name]

    def state_dict(self) -> dict[str, Any]:
        """Extra method state to checkpoint beyond networks, optimisers, schedules and averages."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    # -- sampling ------------------------------------------------------------------------------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "sample_recipe" in cls.__dict__:  # the hook before samplers had a registry
            raise TypeError(f"{cls.__name__} defines sample_recipe, which nothing calls any more: register its sampler "
                            "with @register_sampler(name) (sidbench.samplers) and name it in sampling()")

    def sample(self, net: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Images from standard-normal `z` with a given generator network (the trainer passes the
        EMA copy), following `sampling()`: what a reader of the saved generator draws."""
        return diffusion.sample(net, z, labels, self.sampling())


__all__ = ["METHODS", "Method", "Recipe", "SAMPLERS", "Stage", "register_method", "register_sampler"]
