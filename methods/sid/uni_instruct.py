"""Uni-Instruct (Wang, Bai, Zhang, Zhang, Luo and Sun 2025, arXiv 2505.20755) as a method plugin, on
SiDA: the same networks (the fake score's encoder is the discriminator), the same fake-score and
discriminator update and the same phases (`SiDA`), the last phase's SiD loss replaced by the
gradient of the expanded f-divergence (`uni_instruct_loss.py`, docs/frontier.md#uni-instruct).

The phases, as the authors' loop runs them: only the fake score and discriminator train until
`generator_start_kimg` (100); SiD's loss (alpha = 1) until `adversarial_start_kimg` (200), the warm
start; then per sample h(r) Delta . (y_fake - x_g) + 0.5 (h - r h') |Delta|^2 plus the DMD-type term
through r (Delta = y_real - y_fake, over SiD's normaliser), mixed with SiDA's adversarial term. The
density ratio r = exp(mean logit) comes from the discriminator's logits at the generator's x_t,
from the same fake-score call as y_fake: no network call beyond SiDA's. The headline forward-KL
runs also start G from a SiD generator (`method.generator_init`), as SiD²A does.
"""
from __future__ import annotations

import dataclasses

import torch

from sidbench.methods.base import Stage, register_method
from sidbench.methods.nonfinite import finite_samples, sum_kept
from sidbench.methods.sid.method import GeneratorPass
from sidbench.methods.sid.settings import UniInstructSettings
from sidbench.methods.sid.sida import SiDA
from sidbench.methods.sid.sida_loss import discriminator_logits
from sidbench.methods.sid.uni_instruct_loss import density_ratio, generator_loss
from sidbench.trainer.context import StepContext

#: The phases, in order: only the fake score trains; SiD's loss (the warm start); the f-divergence.
PHASES = ("fake-score warm-up", "sid", "uni-instruct")


@register_method("uni_instruct")
class UniInstruct(SiDA):
    description = "Uni-Instruct (Wang et al. 2025): SiDA with the gradient of an expanded f-divergence, the ratio from its discriminator"
    settings = UniInstructSettings

    def stages(self) -> list[Stage]:
        return [dataclasses.replace(stage, name=name) for stage, name in zip(super().stages(), PHASES)]

    def _kept_score_loss(self, ctx: StepContext, passed: GeneratorPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.phase < 2:  # the warm start: SiD's loss
            return super()._kept_score_loss(ctx, passed)
        x_g, y_real, y_fake = passed.x_g, passed.y_real, passed.y_fake
        ratio = density_ratio(discriminator_logits(passed.bottleneck))
        keep = finite_samples(x_g, y_real, y_fake, ratio)
        ctx.log("dropped_generator", (~keep).sum())
        ctx.log("ratio", ratio[keep].mean() if keep.any() else torch.full((), float("nan")))
        per_element = generator_loss(x_g, y_real, y_fake, ratio, passed.sigma, str(self.cfg.divergence),
                                     ratio_gradient=bool(self.cfg.ratio_gradient))
        total = sum_kept(per_element, keep)
        value = torch.where(keep.any(), total.detach() / x_g.shape[0], torch.full_like(total, float("nan")))
        return total, keep, value
