"""Continuous-time consistency distillation (sCD; Lu & Song 2024, arXiv 2410.11081) as a method
plugin over EDM teachers; the formulas are in `loss.py`, the settings in `settings.py`,
docs/ect-scd.md#scd.

TrigFlow over EDM: t = atan(sigma / sigma_d), x_t = cos(t) x_sigma, and an EDM denoiser D is the
consistency function f = cos(t) x_t - sigma_d sin(t) F with F = (cos(t) x_t - D(x_t / cos t,
sigma_d tan t)) / (sigma_d sin t) (`loss.denoiser_F`): the student stays an EDM network, the
teacher's F gives its velocity dx_t/dt = sigma_d F_teacher.

One iteration (the order of the conformance fixture, FastGen's): x_0 (`method.data`: real images
or the teacher's samples, `DenoiserStudent`), a truncated-lognormal sigma, t, z ~ N(0, sigma_d^2),
x_t; the teacher's velocity (1 call, no graph); the student's F from a captured random state (with
a graph, through its DDP wrapper while it is updated); the log-variance head at sigma; the tangent
cos t sin t dF-/dt by `torch.func.jvp` of the bare student in float32, autocast off, from the same
random state (the forward's dropout mask); g with the warm-up ratio min(1, (iteration + 1) /
warm-up) (FastGen counts iterations from 1), normalised; the loss w / (e^logvar D) ||F - F- - g||^2
+ logvar summed over the micro-batch; one step of the student and the head together (one clip over
both). Every call is counted: the teacher 1 pass an image, the student 3 (forward, backward), its
JVP 2 (docs/compute.md), the head 3.

Sampling: the student is an EDM denoiser, f = D; the registered "consistency" sampler at sigma_min
0 is exactly that (`ConsistencyParam`'s c_skip, c_out with s_min = 0 are EDM's) and re-noises with
sigma e: one step D(80 z, 80), two steps [80, 0.821] as FastGen's CIFAR-10 recommendation.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from sidbench.diffusion import sigma_data_of
from sidbench.methods.base import Recipe, register_method
from sidbench.methods.baselines.consistency import rng
from sidbench.methods.baselines.scd.loss import (
    LogVarianceHead, denoiser_F, normalize_tangent, sample_sigma, scd_loss, tangent, tangent_jvp, teacher_velocity,
    trigflow_noise, trigflow_time, warmup_ratio,
)
from sidbench.methods.baselines.scd.settings import SCDSettings
from sidbench.methods.baselines.student import DenoiserStudent
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext


@register_method("scd")
class SCD(DenoiserStudent):
    description = "sCD (Lu & Song 2024): continuous-time consistency distillation, TrigFlow over the EDM teacher"
    settings = SCDSettings

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.generator = teacher.copy_network(**self.student_overrides(cfg))
        self.logvar = LogVarianceHead.for_network(self.generator).to(device).train()
        self.sigma_data = sigma_data_of(teacher.net)
        # One RAdam per network (the contract); RAdam is elementwise, so two with the same
        # settings step as FastGen's one optimiser over both.
        self.opts = {name: torch.optim.RAdam(net.parameters(), lr=float(cfg.lr), betas=tuple(cfg.betas),
                                             eps=float(cfg.eps))
                     for name, net in self.networks().items()}

    # -- contract ------------------------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "logvar": self.logvar}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self.opts)

    @classmethod
    def plan_networks(cls, cfg: DictConfig, teacher_constructor: dict[str, Any]) -> dict[str, dict[str, Any]]:
        nets = super().plan_networks(cfg, teacher_constructor)
        return {**nets, "logvar": {"LogVarianceHead": "a linear map of the student's noise embedding (methods/baselines/scd/loss.py)"}}

    def sampling(self) -> Recipe:
        sigmas = [float(s) for s in self.cfg.sampling_sigmas]
        return {"sampler": "consistency", "sigmas": sigmas, "sigma_min": 0.0, "nfe": len(sigmas)}

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> dict[str, Tensor]:
        return self.update(ctx, lambda n: self._loss(ctx, n), names=["generator", "logvar"])

    def _loss(self, ctx: StepContext, n: int) -> tuple[Tensor, dict[str, Tensor]]:
        cfg, sd = self.cfg, self.sigma_data
        x0, labels = self.images.draw(ctx, n)
        sigma = sample_sigma(n, float(cfg.p_mean), float(cfg.p_std), float(cfg.sigma_min), float(cfg.sigma_max),
                             device=self.device)
        t = trigflow_time(sigma, sd)
        z = torch.randn_like(x0) * sd
        x_t = trigflow_noise(x0, z, t)
        dxdt = teacher_velocity(self.teacher.net, x_t, t, labels, sd)
        state = rng.capture(self.device)
        F = denoiser_F(ctx.net("generator").train(), x_t, t, labels, sd)
        logvar = ctx.net("logvar")(sigma)
        # the bare student: no graph, no DDP reduction (and DDP's in-place buffer sync in forward,
        # which functorch refuses, stays out of it)
        F_dot = tangent_jvp(lambda x, s: denoiser_F(self.generator, x, s, labels, sd), x_t, t, dxdt, state=state)
        ratio = warmup_ratio(ctx.iteration + 1, int(cfg.tangent_warmup_iterations))
        g = normalize_tangent(tangent(F.detach(), F_dot, x_t, t, dxdt, ratio, sd), float(cfg.tangent_c),
                              str(cfg.tangent_norm))
        loss = scd_loss(F, g, logvar, sigma, prior_weighting=bool(cfg.prior_weighting),
                        divide_by_dim=bool(cfg.divide_by_dim))
        ctx.log("tangent_ratio", ratio)
        ctx.log("logvar", logvar.detach().float().mean())
        total = loss.sum()
        return total, {"scd": total.detach().float() / n}
