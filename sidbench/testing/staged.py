"""A toy method that uses every part of the contract at once: for the trainer's tests (stages,
resume across a boundary, DDP) and as a worked example for plugin authors.

`SIDBENCH_PLUGINS=sidbench.testing.staged sidbench run method=staged-toy ...` registers it. Its
iteration is shaped like progressive distillation's: the generator regresses onto what a frozen
teacher's denoiser makes of the same input at half the noise level; at the stage boundary the generator becomes the
next stage's teacher (a promotion), its optimiser restarts with its warm-up, and its EMA restarts.
An auxiliary network trains jointly with the generator in the same update (like DMD2's GAN head
with the fake score), and an EMA of it with a constant mu is kept as the method's own average.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.methods.base import Method, Recipe, Stage, register_method
from sidbench.schema import setting
from sidbench.trainer.context import StepContext
from sidbench.trainer.ema import EMA
from sidbench.trainer.schedule import lr_schedule


@dataclass
class StagedToySettings:
    lr: float = setting(1e-3, gt=0, doc="Adam's learning rate of both networks")
    stage_kimg: float = setting(0.032, gt=0, doc="where the second stage starts")
    warmup_iterations: int = setting(2, ge=0,
        doc="iterations of linear LR warm-up of the generator (restarted with the stage)")
    clip_grad_norm: float = setting(1.0, gt=0, doc="gradient-norm clip of the joint update")
    mu: float = setting(0.9, ge=0, lt=1, doc="the EMA rate of the auxiliary network's average")
    sigma_init: float = setting(2.5, gt=0, doc="the generator's input sigma")


@register_method("staged-toy")
class StagedToy(Method):
    description = "test method: two stages, promotion, joint update, clipping, LR warm-up, own EMA"
    settings = StagedToySettings

    def __init__(self, teacher: Any, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.generator = teacher.init_generator()
        self.aux = teacher.copy_network()
        # the frozen network the generator imitates: the teacher, then the stage-0 student
        self.target = copy.deepcopy(teacher.net).requires_grad_(False).eval()
        self.aux_average = EMA(self.aux)
        self._optimizers = {"generator": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr),
                            "aux": torch.optim.Adam(self.aux.parameters(), lr=cfg.lr)}
        self._schedulers = {"generator": lr_schedule(self._optimizers["generator"], warmup=int(cfg.warmup_iterations))}
        self.promotions = 0

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "aux": self.aux}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return self._schedulers

    def frozen_networks(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.target}

    def averages(self) -> dict[str, EMA]:
        return {"aux_average": self.aux_average}

    def stages(self) -> list[Stage]:
        return [Stage("two-step"), Stage("one-step", start=float(self.cfg.stage_kimg), reset_optimizers=("generator",), reset_ema=True)]

    def enter_stage(self, index: int, stage: Stage) -> None:
        self.target.load_state_dict(self.generator.state_dict())  # the student becomes the teacher
        self.promotions += 1

    def state_dict(self) -> dict[str, Any]:
        return {"promotions": self.promotions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.promotions = int(state["promotions"])

    def sampling(self) -> Recipe:
        s = float(self.cfg.sigma_init)
        if self.promotions == 0:
            return {"sampler": "heun", "sigmas": [80.0, s, 0.0], "nfe": 3}
        return {"sampler": "one_step", "sigmas": [s], "nfe": 1}

    def train_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        def loss_fn(n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            sigma = torch.full((n,), float(self.cfg.sigma_init), device=self.device)
            x = torch.randn(n, *self.teacher.shape, device=self.device) * float(self.cfg.sigma_init)
            with torch.no_grad():  # imitate the frozen network at half the noise level
                target = self.target(x, sigma / 2, None)
            out = ctx.net("generator")(x, sigma, None)
            regression = ((out - target) ** 2).sum()
            aux = ((ctx.net("aux")(x, sigma, None) - out.detach()) ** 2).sum()
            return regression + aux, {"regression": regression.detach() / n, "aux": aux.detach() / n}

        logs = ctx.update(["generator", "aux"], loss_fn, clip_grad_norm=float(self.cfg.clip_grad_norm))
        self.aux_average.blend(self.aux, float(self.cfg.mu))
        ctx.log("promotions", float(self.promotions))
        return logs
