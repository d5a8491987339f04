"""Exact expectations for loss tests: a 1-D data law N(mu, s2), a generator x_g = m + a z
(law N(m, a^2)), both diffused to x_t = x + sigma n, with every denoiser, log-density and density
ratio in closed form, and Gauss-Hermite nodes over (z, n).

An expectation over the generator's and the diffusion's noise is a weighted sum over the nodes;
for the smooth integrands of the divergence losses (polynomials times exp of quadratics) 40 nodes
a dimension leave an error at float64 rounding. So a surrogate loss's gradient can be compared
with the exact gradient of the divergence it stands for (autograd through every dependence on
(m, a), the generator's density included) to ~1e-12, where Monte Carlo would leave percents.
Complements `sidbench.testing.gaussian` (the training test bed) for the pure loss functions.
"""
from __future__ import annotations

import math

import numpy as np
import torch

DTYPE = torch.float64


def hermite_nodes(k: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, n, w), each [k*k] float64: the tensor grid of probabilists' Gauss-Hermite nodes, with
    weights summing to 1, so that E[g(z, n)] = sum(w * g(z, n)) for z, n ~ N(0, 1) independent."""
    x, w = np.polynomial.hermite_e.hermegauss(k)
    z, n = np.meshgrid(x, x, indexing="ij")
    weights = np.outer(w, w) / (2 * math.pi)
    return tuple(torch.tensor(v.reshape(-1), dtype=DTYPE) for v in (z, n, weights))  # type: ignore[return-value]


def denoiser(x: torch.Tensor, mean: float | torch.Tensor, var: float | torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x_0 | x_t = x] for x_0 ~ N(mean, var), x_t = x_0 + sigma n."""
    return mean + var / (var + sigma**2) * (x - mean)


def log_density(x: torch.Tensor, mean: float | torch.Tensor, var: float | torch.Tensor) -> torch.Tensor:
    """log N(x; mean, var)."""
    var = torch.as_tensor(var, dtype=DTYPE)
    return -0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)


def log_ratio(x: torch.Tensor, mu: float, s2: float, m: float | torch.Tensor, a2: float | torch.Tensor,
              sigma: float) -> torch.Tensor:
    """log p_t(x) / q_t(x) for p = N(mu, s2) and q = N(m, a2) diffused to sigma."""
    return log_density(x, mu, s2 + sigma**2) - log_density(x, m, a2 + sigma**2)
