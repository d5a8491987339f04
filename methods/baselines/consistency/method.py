"""Consistency distillation (Song et al. 2023, arXiv 2303.01469) as a method plugin on EDM networks
(Karras et al. 2022, arXiv 2206.00364); the formulas are in `loss.py`.

One iteration: x (a teacher sample or a real image), adjacent points t > t2 of the N-point Karras
grid, x_t = x + t n, one Heun step of the teacher x_t -> x_t2, and the loss
d(f(x_t, t), stopgrad f_target(x_t2, t2)) summed over the micro-batch's samples (the step context
divides by the batch: the authors' mean), one RAdam step (both published configurations; no warm-up,
no clipping), then the target network's EMA step theta- <- mu theta- + (1 - mu) theta. The distance
is computed in float32 outside autocast, as the authors' LPIPS runs.

The networks. The generator f is `ConsistencyParam` around a copy of the teacher: the teacher's
raw UNet with the consistency c_skip and c_out, so that f(x, sigma_min) = x. The target network is
an `EMA` of f with the constant rate mu (0 on CIFAR-10: the target is f itself, copied after each
update), returned by `averages()`; the trainer counts its calls through `.module`. With dropout,
the target runs in train mode with the random state the online call started from, so both see the
same dropout mask (as the authors' code does; their PyTorch code restores only the CPU generator's
state, this restores the CUDA one too, as their JAX code shares one dropout key). The published
runs use dropout 0, the default here (`method.dropout: null` keeps the teacher's).

How the generator is saved and rebuilt. `sidbench run` saves the trainer's EMA of f with
`generator_constructor()` through `save_native_teacher`. `ConsistencyParam` holds no weights of
its own and its state_dict keys are the EDM network's, so the constructor `plan_networks` gives
for the generator is the PLAIN EDM one: `load_teacher_file` builds an ordinary EDMPrecond and
loads the saved weights strictly. What makes it a consistency function again is the recipe,
`{"sampler": "consistency", "sigmas": [...], "sigma_min": ..., "nfe": ...}`: the registered
"consistency" sampler (`sidbench.diffusion.sample_consistency`) wraps a plain EDM network in
`ConsistencyParam(net, sigma_min)` before sampling (a network that already is one, as in
training, is used as it is). Read the file as an EDM denoiser without its recipe and you get a
different function: its info says so.

Sampling: one step f(80 z, 80) by default; multistep at `sampling_sigmas` (e.g. [80.0, 0.8]):
x = f(s_0 z, s_0), then x = f(x + sqrt(s^2 - s_min^2) n, s) for each further s (the paper's
Algorithm 1), with fresh noise n that is a function of z (`sidbench.diffusion.per_sample_noise`):
the same z gives the same image in any batch, on any run.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from sidbench.config import ConfigError
from sidbench.diffusion import adjacent_points, consistency_function, heun_step
from sidbench.methods.base import Recipe, register_method
from sidbench.methods.baselines.consistency import rng
from sidbench.methods.baselines.consistency.settings import ConsistencySettings
from sidbench.methods.baselines.distance import LPIPSUnavailableError, image_distance, load_lpips
from sidbench.methods.baselines.student import DenoiserStudent
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext
from sidbench.trainer.ema import EMA



@register_method("consistency")
class ConsistencyDistillation(DenoiserStudent):
    description = "Consistency distillation (Song et al. 2023): one- or few-step consistency function"
    settings = ConsistencySettings

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.sigma_min = float(cfg.sigma_min)
        self.distance = str(cfg.distance)
        if self.distance == "lpips":
            self._load_lpips()
        overrides = self.student_overrides(cfg)
        self.dropout = float(overrides.get("dropout", teacher.constructor.get("dropout", 0.0)) or 0.0)
        self.generator = consistency_function(teacher.copy_network(**overrides), self.sigma_min)
        self.target = EMA(self.generator)  # constant-rate average: blend(net, mu) after each update, from the first
        # RAdam, as both published configurations (no warm-up, no clipping, no weight decay)
        self.opt = torch.optim.RAdam(self.generator.parameters(), lr=float(cfg.lr), betas=tuple(cfg.betas),
                                     eps=float(cfg.eps))

    def _load_lpips(self) -> None:
        """Refuse a machine without the lpips package or its weights before training (one line)."""
        try:
            load_lpips(str(self.cfg.lpips_net), self.device, str(self.cfg.lpips_pooling))
        except (LPIPSUnavailableError, ValueError) as e:
            raise ConfigError(f"{e}") from e

    # -- contract ------------------------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt}

    def averages(self) -> dict[str, EMA]:
        return {"target": self.target}

    @classmethod
    def plan_networks(cls, cfg: DictConfig, teacher_constructor: dict[str, Any]) -> dict[str, dict[str, Any]]:
        nets = super().plan_networks(cfg, teacher_constructor)  # the plain EDM constructor: see the module docstring
        return {**nets, "target": dict(nets["generator"])}

    # -- sampling ------------------------------------------------------------------------------
    def sampling(self) -> Recipe:
        sigmas = [float(s) for s in self.cfg.sampling_sigmas]
        return {"sampler": "consistency", "sigmas": sigmas, "sigma_min": self.sigma_min, "nfe": len(sigmas)}

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> dict[str, Tensor]:
        logs = self.update(ctx, lambda n: self._loss(ctx, n))
        self.target.blend(self.generator, float(self.cfg.mu))
        return logs

    def _lpips_resize(self) -> int | None:
        return int(self.cfg.lpips_resize) if self.cfg.get("lpips_resize") is not None else None

    def _loss(self, ctx: StepContext, n: int) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        x, labels = self.images.draw(ctx, n)
        t, t2 = adjacent_points(n, int(cfg.num_points), sigma_min=self.sigma_min, sigma_max=float(cfg.sigma_max),
                                rho=float(cfg.rho), device=self.device)
        x_t = x + t * torch.randn_like(x)
        with torch.no_grad():  # the target is stop-gradient; the teacher is frozen
            x_t2 = heun_step(self.teacher.net, x_t, t, t2, labels)  # 2 teacher calls
        state = rng.capture(self.device) if self.dropout > 0 else None
        online = ctx.net("generator").train()(x_t, t.flatten(), labels).float()
        with torch.no_grad():
            target_net = self.target.module.train(state is not None)
            if state is not None:
                rng.restore(state)  # the online call's dropout mask
            target = target_net(x_t2, t2.flatten(), labels).float()
        # The distance in float32 outside autocast: the authors' LPIPS network runs in float32 on
        # the float32 outputs (only the UNet is half precision); l2 is float32 either way.
        with torch.autocast(device_type=self.device.type, enabled=False):
            d = image_distance(online, target, self.distance, adapt_gray=bool(cfg.lpips_adapt_gray),
                               lpips_net=str(cfg.lpips_net), lpips_resize=self._lpips_resize(),
                               lpips_pooling=str(cfg.lpips_pooling))
        loss = d.sum()
        return loss, {"consistency": loss.detach() / n}
