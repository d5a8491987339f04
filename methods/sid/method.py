"""Score identity Distillation (SiD) as one method plugin: networks, optimisers, one iteration.

One iteration, in the published order (SPEC section 4):
  1. fake-score update: x_g = G(sigma_init z) with G in eval mode and no graph; optionally
     augmented; the fake score (train mode) learns to denoise x_g with EDM's loss;
  2. generator update on fresh noise: G in train mode, fake score in eval mode, teacher always in
     eval mode; SiD's generator loss, gradients flowing through both score networks into x_g.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.augment import AugmentPipe
from sidbench.methods.base import Method, register_method
from sidbench.methods.sid.loss import edm_training_sigma, fake_score_loss, finite_samples, generator_loss, generator_sigma
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext


@register_method("sid")
class SiD(Method):
    description = "Score identity Distillation (Zhou et al. 2024): data-free, one-step"

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        overrides = {"dropout": cfg.dropout} if cfg.get("dropout") is not None else {}
        self.generator = teacher.init_generator(**overrides)
        self.fake_score = teacher.copy_network(**overrides)
        eps = cfg.adam_eps
        self._optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_generator, betas=(cfg.g_beta1, 0.999), eps=eps),
            "fake_score": torch.optim.Adam(self.fake_score.parameters(), lr=cfg.lr_fake_score, betas=(cfg.fake_beta1, 0.999), eps=eps),
        }
        self.augment = AugmentPipe(p=cfg.augment_p) if cfg.augment_p > 0 else None
        self._overrides = overrides

    # -- contract ------------------------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "fake_score": self.fake_score}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    @property
    def passes_per_sample(self) -> float:
        # fake-score update: G forward (1) + fake forward and backward (3);
        # generator update: G forward and backward (3) + teacher and fake score each forward and
        # backward to the input (3 + 3).
        return 4 + 9

    def describe_networks(self) -> dict[str, dict[str, Any]]:
        c = {**self.teacher.constructor, **self._overrides}
        return {"generator": c, "fake_score": c, "teacher": self.teacher.constructor}

    def sample(self, net: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        s = self.cfg.sigma_init
        return net(z * s, torch.full((z.shape[0],), s, device=z.device), labels)

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> dict[str, float]:
        logs = ctx.update("fake_score", lambda n: self._fake_score_loss(ctx, n), loss_scale=self.cfg.loss_scale_fake_score)
        logs |= ctx.update("generator", lambda n: self._generator_loss(ctx, n), loss_scale=self.cfg.loss_scale_generator)
        return logs

    def _generate(self, net: torch.nn.Module, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        z = torch.randn(n, *self.teacher.shape, device=self.device)
        return self.sample(net, z, labels)

    def _fake_score_loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        labels = ctx.labels(n)
        self.generator.eval()
        with torch.no_grad():
            x_g = self._generate(self.generator, n, labels).float()
        augment_labels = None
        if self.augment is not None:
            x_g, augment_labels = self.augment(x_g)
        fake = ctx.net("fake_score").train()
        sigma = edm_training_sigma(n, self.cfg.p_mean, self.cfg.p_std, device=self.device)
        denoised = fake(x_g + sigma * torch.randn_like(x_g), sigma.flatten(), labels, augment_labels=augment_labels)
        loss = fake_score_loss(denoised.float(), x_g, sigma)
        total = loss.sum()
        return total, {"fake_score": total.item() / n}

    def _generator_loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        labels = ctx.labels(n)
        generator = ctx.net("generator").train()
        self.fake_score.eval()  # no dropout inside the generator's loss
        x_g = self._generate(generator, n, labels).float()
        sigma = generator_sigma(n, self.cfg.t_max, device=self.device)
        x_t = x_g + sigma * torch.randn_like(x_g)
        y_real = self.teacher.net(x_t, sigma.flatten(), labels).float()
        y_fake = self.fake_score(x_t, sigma.flatten(), labels).float()
        total, dropped = reduce_generator_loss(generator_loss(x_g, y_real, y_fake, self.cfg.alpha), x_g, y_real, y_fake)
        # All samples dropped is a failure the trainer must see, not a zero loss.
        value = total.item() / n if dropped < n else float("nan")
        return total, {"generator": value, "dropped_samples": float(dropped)}


def reduce_generator_loss(loss: torch.Tensor, x_g: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of SiD's per-element loss over the samples whose x_g, y_real and y_fake are all finite
    (the others are dropped); the trainer's context then scales it and divides by the batch."""
    keep = finite_samples(x_g, y_real, y_fake)
    return loss[keep].sum(), int((~keep).sum())
