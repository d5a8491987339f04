"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) as small pure functions.

A denoiser is any callable ``net(x, sigma, class_labels) -> x0_hat``; it receives ``x`` in float64
and ``sigma`` as a float64 tensor of shape [B] (EDM preconditioners cast both to float32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["Denoiser", "karras_sigmas", "heun_step", "heun_integrate", "heun_sample", "one_step", "SAMPLERS",
           "sample_with_recipe", "RecipeError"]

Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def karras_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """The N-step Karras grid in float64, with the trailing 0 (length N+1):
    ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    frac = i / max(num_steps - 1, 1)  # a 1-step grid is just [sigma_max, 0]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + frac * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _denoise(net: Denoiser, x: Tensor, sigma: Tensor, class_labels: Tensor | None) -> Tensor:
    return net(x, sigma.expand(x.shape[0]), class_labels).to(torch.float64)


def heun_step(net: Denoiser, x: Tensor, s_cur: Tensor, s_next: Tensor, class_labels: Tensor | None = None) -> Tensor:
    """One step of the probability-flow ODE dx/ds = (x - D(x, s)) / s from s_cur to s_next:
    Euler, then the trapezoidal (Heun) correction unless s_next = 0. Float64 in and out."""
    d_cur = (x - _denoise(net, x, s_cur, class_labels)) / s_cur
    x_next = x + (s_next - s_cur) * d_cur
    if s_next > 0:
        d_next = (x_next - _denoise(net, x_next, s_next, class_labels)) / s_next
        x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
    return x_next


@torch.no_grad()
def heun_integrate(net: Denoiser, x: Tensor, sigmas: Tensor, class_labels: Tensor | None = None) -> Tensor:
    """Integrate from ``x`` at ``sigmas[0]`` down the grid ``sigmas`` (k-diffusion style: ``x`` is
    already noisy). The state is float64 as in the reference; returns float64.
    NFE = 2 (len(sigmas) - 1) - (number of zero targets), i.e. 2N - 1 on a Karras grid."""
    x = x.to(torch.float64)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=x.device)
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = heun_step(net, x, s_cur, s_next, class_labels)
    return x


def heun_sample(
    net: Denoiser,
    z: Tensor,
    class_labels: Tensor | None = None,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    sigmas: Tensor | None = None,
) -> Tensor:
    """Deterministic EDM sampling from unit Gaussian noise ``z``: ``x = sigma_0 z``, then Heun steps
    on the Karras grid (or on ``sigmas`` if given, which overrides the grid arguments).
    Returns the samples in ``z``'s dtype (the integration itself runs in float64)."""
    if sigmas is None:
        sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho, device=z.device)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=z.device)
    x = z.to(torch.float64) * sigmas[0]
    return heun_integrate(net, x, sigmas, class_labels).to(z.dtype)


def one_step(net: Denoiser, z: Tensor, class_labels: Tensor | None, sigma: float) -> Tensor:
    """A one-step generator: the denoiser evaluated once at a fixed noise level on ``sigma z``
    (SiD: sigma 2.5; DMD: sigma 80). 1 NFE."""
    s = torch.full((z.shape[0],), float(sigma), device=z.device, dtype=z.dtype)
    return net(z * float(sigma), s, class_labels)


class RecipeError(ValueError):
    """A sampling recipe this code cannot follow; the message says which and what is known."""


def _one_step(net: Denoiser, z: Tensor, labels: Tensor | None, recipe: dict) -> Tensor:
    return one_step(net, z, labels, recipe["sigma"])


def _heun(net: Denoiser, z: Tensor, labels: Tensor | None, recipe: dict) -> Tensor:
    return heun_sample(net, z, labels, sigmas=torch.tensor(recipe["sigmas"], dtype=torch.float64))


#: sampler name -> f(net, z, labels, recipe): the recipes any method can name without code of its own
SAMPLERS = {"one_step": _one_step, "heun": _heun}


def sample_with_recipe(net: Denoiser, z: Tensor, class_labels: Tensor | None, recipe: dict) -> Tensor:
    """Follow a recipe such as ``{"sampler": "one_step", "sigma": 2.5, "nfe": 1}`` or
    ``{"sampler": "heun", "sigmas": [80, ..., 0], "nfe": 35}``."""
    name = recipe.get("sampler")
    if name not in SAMPLERS:
        raise RecipeError(f"unknown sampler {name!r} in recipe {recipe}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](net, z, class_labels, recipe)
