"""f-distill (Xu, Nie and Vahdat 2025, arXiv 2502.15681) as a method plugin: DMD2's iteration with
each sample's distribution-matching gradient weighted by h(r) = r^2 f''(r) of the chosen
f-divergence, r the density ratio p_data / q_G at the DM term's x_t.

Everything but the weights is DMD2 (`DMD2` in method.py: the generator, the fake score and its GAN
head, the TTUR, the GAN terms, the fake-score update). The weights (docs/frontier.md#f-distill,
`f_distill_loss.py`): the DM term's one no-grad fake-score call also returns its bottleneck, the
frozen GAN head turns it into a logit per sample, r = exp(logit) clamped to [ratio_min, ratio_max],
divided by the running mean of r in its sigma bin (`RatioNormaliser`, whose averages are
checkpointed with the run), h(r) normalised to mean 1 over the micro-batch of every process. Reverse
KL (h = 1) skips the head's call: its iteration is DMD2's, draw for draw.

The weights are normalised per micro-batch (FastGen, the reference, has one batch a process):
with trainer.batch_gpu below the batch, each micro-batch's weights have mean 1.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.methods.base import register_method
from sidbench.methods.baselines.dmd.f_distill_loss import RatioNormaliser, density_ratio, f_distill_weights
from sidbench.methods.baselines.dmd.method import DMD2
from sidbench.methods.baselines.dmd.settings import FDistillSettings
from sidbench.methods.f_divergence import divergence
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """t summed over the processes of a distributed run (in place); t itself on one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t


@register_method("f_distill")
class FDistill(DMD2):
    description = "f-distill (Xu et al. 2025): DMD2 with the DM gradient weighted by h(r) of an f-divergence"
    settings = FDistillSettings

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.divergence = divergence(str(cfg.divergence))
        # settings.check refuses a ratio-weighted divergence without the head; this guards direct construction
        if not self.divergence.constant_weight and self.gan_head is None:
            raise ValueError(f"f-distill with {cfg.divergence} needs the GAN head (method.gan.enabled=true)")
        self.normaliser = (RatioNormaliser(int(cfg.ratio_bins), float(self.grid[0]), float(self.grid[-1]), float(cfg.ratio_ema))
                           if int(cfg.ratio_bins) > 0 else None)

    def _dm_fake_score(self, ctx: StepContext, x_t: torch.Tensor, sigma: torch.Tensor,
                       labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.divergence.constant_weight:  # h = 1: DMD2's gradient, without the head's call
            return super()._dm_fake_score(ctx, x_t, sigma, labels)
        mu_fake, features = self.fake_score(x_t, sigma.flatten(), labels, return_bottleneck=True)
        logits = self.gan_head(features).float()
        weights = f_distill_weights(logits, sigma, self.divergence.name, self.normaliser, all_reduce_sum,
                                    float(self.cfg.ratio_min), float(self.cfg.ratio_max))
        ctx.log("ratio", density_ratio(logits, float(self.cfg.ratio_min), float(self.cfg.ratio_max)).mean())
        ctx.log("weight_max", weights.max())
        return mu_fake.float(), weights

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **({"ratio_normaliser": self.normaliser.state_dict()} if self.normaliser else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.normaliser is not None and "ratio_normaliser" in state:
            self.normaliser.load_state_dict(state["ratio_normaliser"])
