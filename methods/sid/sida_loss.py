"""The adversarial terms of SiDA (Zhou et al. 2024, arXiv 2410.14919), as pure functions; SiD's
own losses are in `loss.py`. Symbols as in docs/sid.md#sida:
  l       discriminator logits: the fake score's encoder output at its lowest resolution,
          averaged over channels ([B, 1, h, w], float32)
  w_i     EDM's weight of sample i's noise level, (sigma^2 + sd^2) / (sigma sd)^2
  wf_i    SiD's per-sample normaliser mean|x_g - y_real| (`loss.normaliser`)
Each BCE below is ONE scalar, the mean over every logit of the micro-batch, as published; the
per-sample weights then multiply that scalar.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

#: Logits are clamped to this range in the generator's adversarial term (as published).
LOGIT_CLAMP = 10.0


def discriminator_logits(bottleneck: torch.Tensor) -> torch.Tensor:
    """l [B, 1, h, w] in float32: the encoder's lowest-resolution features averaged over channels
    (computed in the network's dtype, used in float32)."""
    return bottleneck.mean(dim=1, keepdim=True).float()


def discriminator_loss(l_real: torch.Tensor, l_fake: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """L_D = sum_i w_i * 0.5 * (BCE(l_real, 1) + BCE(l_fake, 0)); `weight` is w_i [B, 1, 1, 1]."""
    bce_real = F.binary_cross_entropy_with_logits(l_real, torch.ones_like(l_real))
    bce_fake = F.binary_cross_entropy_with_logits(l_fake, torch.zeros_like(l_fake))
    return (weight.flatten() * 0.5 * (bce_real + bce_fake)).sum()


def adversarial_generator_loss(logits: torch.Tensor, wf: torch.Tensor, image_numel: int) -> torch.Tensor:
    """sum_i a_i with a_i = g * C H W / wf_i and g = BCE(clamp(l, -10, 10), 1) (the generator wants
    its images called real). `wf` is [B, 1, 1, 1]; `image_numel` is C H W of one image, so that the
    term sums over pixels like SiD's loss it is mixed with."""
    clamped = logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
    g = F.binary_cross_entropy_with_logits(clamped, torch.ones_like(clamped))
    return (g * image_numel / wf.flatten()).sum()
