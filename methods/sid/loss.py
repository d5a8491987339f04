"""The two SiD losses (Zhou et al. 2024, arXiv 2404.04057), as pure per-element functions.

Symbols as in the paper and docs/sid.md#losses:
  x_g     generated image  G_theta(sigma_init * z)
  y_real  teacher denoiser f_phi(x_t, sigma)          (x_t = x_g + sigma * n)
  y_fake  fake-score denoiser f_psi(x_t, sigma)
Both functions return the UNREDUCED loss (same shape as x_g); the method reduces it (NaN-sample
drop, sum, loss scaling, division by the batch) in one visible place.
"""
from __future__ import annotations

import torch


SIGMA_DATA = 0.5


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


def edm_weight(sigma: torch.Tensor) -> torch.Tensor:
    """EDM's loss weight of a noise level: w(sigma) = (sigma^2 + sd^2) / (sigma sd)^2."""
    return (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2


def fake_score_loss(denoised: torch.Tensor, x_g: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EDM's denoising loss on generated images: w(sigma) * (f_psi(x_g + sigma n) - x_g)^2.
    `sigma` broadcasts against x_g ([B,1,1,1])."""
    return edm_weight(sigma) * (denoised - x_g) ** 2


def edm_training_sigma(
    n: int, p_mean: float = -1.2, p_std: float = 1.2, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """ln sigma ~ N(p_mean, p_std^2), shape [n, 1, 1, 1] (the fake score's noise levels)."""
    return (torch.randn(n, 1, 1, 1, device=device) * p_std + p_mean).exp()


def sigma_from_u(
    u: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """Karras' continuous grid read backwards: u = 0 gives sigma_min, u = 1 gives sigma_max."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + (1 - u) * (b - a)) ** rho


def generator_sigma(
    n: int,
    t_max: float = 800,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """u ~ U(0, t_max/1000) mapped by `sigma_from_u`: sigma in [0.002, ~24.4] for t_max = 800."""
    u = torch.rand(n, 1, 1, 1, device=device) * (t_max / 1000)
    return sigma_from_u(u, sigma_min, sigma_max, rho)
