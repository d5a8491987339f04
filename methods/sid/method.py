"""Score identity Distillation (SiD) as one method plugin: networks, optimisers, one iteration.

One iteration, in the published order (docs/sid.md#iteration):
  1. fake-score update: x_g = G(sigma_init z) with G in eval mode and no graph; optionally
     augmented; the fake score (train mode) learns to denoise x_g with EDM's loss;
  2. generator update on fresh noise: G in train mode, fake score in eval mode, teacher always in
     eval mode; SiD's generator loss, gradients flowing through both score networks into x_g.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig

from sidbench.augment import AugmentPipe
from sidbench.diffusion import edm_training_sigma, sigma_data_of
from sidbench.methods.base import Method, Recipe, register_method
from sidbench.methods.nonfinite import finite_samples, sum_kept
from sidbench.methods.sid.loss import fake_score_loss, generator_loss, generator_sigma
from sidbench.methods.sid.settings import SiDSettings
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext


class GeneratorPass(NamedTuple):
    """What the generator update's network calls give: x_g (with G's graph), the two denoisers at
    x_t = x_g + sigma n (graphs through their input), the fake score's bottleneck if asked, sigma."""

    x_g: torch.Tensor
    y_real: torch.Tensor
    y_fake: torch.Tensor
    bottleneck: torch.Tensor | None
    sigma: torch.Tensor


@register_method("sid")
class SiD(Method):
    description = "Score identity Distillation (Zhou et al. 2024): data-free, one-step"
    settings = SiDSettings

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        overrides = {"dropout": cfg.dropout} if cfg.get("dropout") is not None else {}
        self.generator = teacher.init_generator(**overrides)
        self.fake_score = teacher.copy_network(**overrides)
        self._optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_generator, betas=tuple(cfg.betas_generator), eps=cfg.eps),
            "fake_score": torch.optim.Adam(self.fake_score.parameters(), lr=cfg.lr_fake_score, betas=tuple(cfg.betas_fake_score), eps=cfg.eps),
        }
        self.augment = AugmentPipe(p=cfg.augment_p, resample=cfg.augment_resample) if cfg.augment_p > 0 else None

    # -- contract ------------------------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "fake_score": self.fake_score}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    @classmethod
    def plan_networks(cls, cfg: DictConfig, teacher_constructor: dict[str, Any]) -> dict[str, dict[str, Any]]:
        student = {**teacher_constructor, **({"dropout": cfg.dropout} if cfg.get("dropout") is not None else {})}
        return {"teacher": dict(teacher_constructor), "generator": student, "fake_score": dict(student)}

    def sampling(self) -> Recipe:
        return {"sampler": "one_step", "sigmas": [float(self.cfg.sigma_init)], "nfe": 1}

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        logs = ctx.update("fake_score", lambda n: self._fake_score_loss(ctx, n), loss_scale=self.cfg.loss_scale_fake_score)
        logs |= ctx.update("generator", lambda n: self._generator_loss(ctx, n), loss_scale=self.cfg.loss_scale_generator)
        return logs

    def _generate(self, net: torch.nn.Module, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        z = torch.randn(n, *self.teacher.shape, device=self.device)
        return self.sample(net, z, labels)

    def _fake_samples(self, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        """x_g for the fake score's update: G in eval mode, without a graph."""
        self.generator.eval()
        with torch.no_grad():
            return self._generate(self.generator, n, labels).float()

    def _kept_fake_score_loss(self, ctx: StepContext, denoised: torch.Tensor, x_g: torch.Tensor, sigma: torch.Tensor,
                              *more: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(EDM's denoising loss on x_g summed over the kept samples, the kept mask [B]). As
        published, a sample with a non-finite value in x_g, the denoised output or `more` leaves
        the sum; `train/dropped_fake_score` counts them."""
        keep = finite_samples(x_g, denoised, *more)
        ctx.log("dropped_fake_score", (~keep).sum())
        return sum_kept(fake_score_loss(denoised, x_g, sigma, sigma_data_of(self.fake_score)), keep), keep

    def _fake_score_loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = ctx.labels(n)
        x_g = self._fake_samples(n, labels)
        augment_labels = None
        if self.augment is not None:
            x_g, augment_labels = self.augment(x_g)
        fake = ctx.net("fake_score").train()
        sigma = edm_training_sigma(n, self.cfg.p_mean, self.cfg.p_std, device=self.device)
        denoised = fake(x_g + sigma * torch.randn_like(x_g), sigma.flatten(), labels, augment_labels=augment_labels).float()
        total, _ = self._kept_fake_score_loss(ctx, denoised, x_g, sigma)
        return total, {"fake_score": total.detach() / n}

    def _generator_forward(self, ctx: StepContext, n: int, labels: torch.Tensor | None, *,
                           bottleneck: bool = False) -> GeneratorPass:
        """The generator update's x_g, y_real, y_fake (the fake score's bottleneck or None, sigma):
        G in train mode, the fake score in eval mode (no dropout inside the generator's loss)."""
        generator = ctx.net("generator").train()
        self.fake_score.eval()
        x_g = self._generate(generator, n, labels).float()
        sigma = generator_sigma(n, self.cfg.t_max, device=self.device)
        x_t = x_g + sigma * torch.randn_like(x_g)
        y_real = self.teacher.net(x_t, sigma.flatten(), labels).float()
        if bottleneck:
            y_fake, features = self.fake_score(x_t, sigma.flatten(), labels, return_bottleneck=True)
        else:  # the plain call: a fake score need not know the keyword (e.g. sidbench.testing's)
            y_fake, features = self.fake_score(x_t, sigma.flatten(), labels), None
        return GeneratorPass(x_g, y_real, y_fake.float(), features, sigma)

    def _kept_generator_loss(self, ctx: StepContext, x_g: torch.Tensor, y_real: torch.Tensor,
                             y_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(SiD's generator loss summed over the kept samples, the kept mask [B], the value to log).
        As published, a sample with a non-finite value in x_g or either score leaves the sum
        (`train/dropped_generator` counts them); the logged value is NaN when all left, a failure
        the trainer must see, not a zero loss."""
        keep = finite_samples(x_g, y_real, y_fake)
        ctx.log("dropped_generator", (~keep).sum())
        total = sum_kept(generator_loss(x_g, y_real, y_fake, self.cfg.alpha), keep)
        value = torch.where(keep.any(), total.detach() / x_g.shape[0], torch.full_like(total, float("nan")))
        return total, keep, value

    def _generator_loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_g, y_real, y_fake, _, _ = self._generator_forward(ctx, n, ctx.labels(n))
        total, _, value = self._kept_generator_loss(ctx, x_g, y_real, y_fake)
        return total, {"generator": value}
