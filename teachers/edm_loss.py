"""EDM's training loss for a denoiser (Karras et al. 2022), used to train the shipped teachers."""
from __future__ import annotations

import torch

SIGMA_DATA = 0.5


def edm_loss(
    net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, p_mean: float = -1.2, p_std: float = 1.2
) -> torch.Tensor:
    """Per-element loss: ln sigma ~ N(p_mean, p_std^2), weight (sigma^2 + sd^2) / (sigma sd)^2,
    loss = weight * (D(x + sigma n, sigma) - x)^2."""
    sigma = (torch.randn(x.shape[0], 1, 1, 1, device=x.device) * p_std + p_mean).exp()
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    denoised = net(x + sigma * torch.randn_like(x), sigma.flatten(), labels)
    return weight * (denoised - x) ** 2
