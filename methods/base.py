"""The method contract: what a distillation method receives and what it provides.

A method owns its networks and optimisers and knows how to run ONE iteration. It never writes a
loop, a checkpoint or a log line: the trainer does that for every method alike. Inside an
iteration the method asks the trainer's `StepContext` to run each update (micro-batches,
precision, loss scaling, gradient sanitising, the optimiser step) and returns its losses.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig

from sidbench.registry import Registry

if TYPE_CHECKING:
    from sidbench.teachers.teacher import Teacher
    from sidbench.trainer.context import StepContext


class Method(ABC):
    """Base class of every distillation method.

    Receives: the loaded `teacher` (a frozen EDM denoiser plus its card), the method's config
    (`cfg.method`, the whole resolved config is in `full_cfg`) and the device.
    Provides:
      - `networks()`: the trainable networks by name (checkpointed, wrapped in DDP, the generator
        averaged by EMA); `optimizers()`: an optimiser per network, under the same name;
      - `train_step(ctx)`: one iteration; returns `{loss_name: value}`;
      - `generator_name`: which network is the generator (the trainer keeps its EMA);
      - `sample(net, z, labels)`: images in [-1, 1] from noise with a given generator network
        (the trainer passes the EMA copy for evaluation);
      - `passes_per_sample`: the iteration's cost in network passes per generated image
        (forward = 1, backward = 2, a backward only to the input counts the same).
    A method that trains on real images too (SiDA, progressive distillation's data mode) sets
    `uses_real_data = True`; the run then opens the dataset's images and `ctx.real(n)` draws them.
    """

    #: one-line description shown by `sidbench list`
    description: ClassVar[str] = ""
    generator_name: ClassVar[str] = "generator"
    #: whether `train_step` draws real training images through `ctx.real(n)`
    uses_real_data: ClassVar[bool] = False

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        self.teacher = teacher
        self.cfg = cfg
        self.device = device
        self.full_cfg = full_cfg

    @abstractmethod
    def networks(self) -> dict[str, torch.nn.Module]:
        """Trainable networks by name."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per trained network, keyed by the network's name."""

    @abstractmethod
    def train_step(self, ctx: StepContext) -> dict[str, float]:
        """Run one iteration through `ctx.update(...)`; return the losses to log."""

    @abstractmethod
    def sample(self, net: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Generate images in [-1, 1] from standard-normal `z` with generator network `net`."""

    @property
    @abstractmethod
    def passes_per_sample(self) -> float:
        """Network passes one iteration costs per generated image (forward 1, backward 2)."""

    def describe_networks(self) -> dict[str, dict[str, Any]]:
        """Constructor arguments of each network, for `dry_run` and the run's records."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Extra method state to checkpoint beyond networks and optimisers (e.g. a stage counter)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


METHODS: Registry[type[Method]] = Registry("method", "sidbench.methods")
register_method = METHODS.register
