"""The two SiD losses (Zhou et al. 2024, arXiv 2404.04057), as pure per-element functions.

Symbols as in the paper and docs/sid.md#losses:
  x_g     generated image  G_theta(sigma_init * z)
  y_real  teacher denoiser f_phi(x_t, sigma)          (x_t = x_g + sigma * n)
  y_fake  fake-score denoiser f_psi(x_t, sigma)
Both functions return the UNREDUCED loss (same shape as x_g); the method reduces it (NaN-sample
drop, sum, loss scaling, division by the batch) in one visible place. The noise levels and EDM's
weight are `sidbench.diffusion`'s.
"""
from __future__ import annotations

import torch

from sidbench.diffusion import edm_weight, karras_sigma


def normaliser(x_g: torch.Tensor, y_real: torch.Tensor) -> torch.Tensor:
    """w [B, 1, 1, 1]: the mean over pixels of |x_g - y_real| per sample, without gradient, clipped
    below at 1e-5; it normalises the loss across noise levels like DMD's weighting."""
    with torch.no_grad():
        return (x_g - y_real).abs().mean(dim=tuple(range(1, x_g.ndim)), keepdim=True).clamp(min=1e-5)


def generator_loss(x_g: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float) -> torch.Tensor:
    """L_G per element: (y_real - y_fake) * ((y_real - x_g) - alpha (y_real - y_fake)) / w,
    with w = `normaliser(x_g, y_real)`."""
    diff = y_real - y_fake
    return diff * ((y_real - x_g) - alpha * diff) / normaliser(x_g, y_real)


def fake_score_loss(denoised: torch.Tensor, x_g: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's denoising loss on generated images: w(sigma) * (f_psi(x_g + sigma n) - x_g)^2, with
    EDM's weight w at the fake score's sigma_data. `sigma` broadcasts against x_g ([B,1,1,1])."""
    return edm_weight(sigma, sigma_data) * (denoised - x_g) ** 2


def generator_sigma(
    n: int,
    t_max: float = 800,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """u ~ U(0, t_max/1000) on Karras' schedule read backwards, sigma(1 - u) (u = 0 is sigma_min,
    u = 1 sigma_max): sigma in [0.002, ~24.4] for t_max = 800."""
    u = torch.rand(n, 1, 1, 1, device=device) * (t_max / 1000)
    return karras_sigma(1 - u, sigma_min, sigma_max, rho)
