"""EDM's training loss for a denoiser (Karras et al. 2022), used to train the shipped teachers."""
from __future__ import annotations

import torch

from sidbench.diffusion import edm_training_sigma, edm_weight, sigma_data_of


def edm_loss(
    net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, p_mean: float = -1.2, p_std: float = 1.2
) -> torch.Tensor:
    """Per-element loss: ln sigma ~ N(p_mean, p_std^2), weight (sigma^2 + sd^2) / (sigma sd)^2 with
    the network's sigma_data, loss = weight * (D(x + sigma n, sigma) - x)^2."""
    sigma = edm_training_sigma(x.shape[0], p_mean, p_std, device=x.device)
    weight = edm_weight(sigma, sigma_data_of(net))
    denoised = net(x + sigma * torch.randn_like(x), sigma.flatten(), labels)
    return weight * (denoised - x) ** 2
