"""Diffusion primitives in EDM's sigma form (Karras et al. 2022, arXiv 2206.00364), as small pure
functions: the noise schedule and its grids, the training noise draw, the loss weights, the steps
of the probability-flow ODE dx/ds = (x - D(x, s)) / s, and the samplers.

Every method's noise levels, weights and ODE steps come from here; what a paper writes as its own
loss (SiD's generator loss, DMD's gradient) stays in the method's loss.py. Conventions (docs/edm.md):
x_s = x + s n; a denoiser is ``net(x, sigma[B], labels) -> x0_hat`` and holds its `sigma_data`.

The samplers are registered by name (`sidbench.samplers`: the registry and the one signature
``sampler(net, noise, labels, sigmas, **options) -> images``); `sample` follows a recipe.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from sidbench.samplers import SAMPLERS, RecipeError, read_recipe, register_sampler, sampler_arguments
from sidbench.seeding import mix
from sidbench.teachers.networks import ConsistencyParam, Precond

__all__ = [
    "Denoiser", "SIGMA_DATA", "sigma_data_of",
    "karras_sigma", "karras_sigmas", "karras_points", "karras_ascending", "nested_sigmas", "adjacent_points",
    "edm_training_sigma", "edm_weight", "edm_weight_snr", "truncated_snr_weight",
    "per_sample_sigma", "euler_step", "heun_step",
    "sample_one_step", "sample_heun", "sample_euler", "sample_consistency", "heun_sample", "per_sample_noise",
    "consistency_function", "sample", "register_sampler", "SAMPLERS", "RecipeError",
]

#: ``denoiser(x, sigma[B], class_labels) -> x0_hat``, as EDM networks and `Teacher.net` are.
Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]

#: EDM's sigma_data, for callers without a network (the property belongs to the network).
SIGMA_DATA = 0.5


def sigma_data_of(net: nn.Module | Any, default: float = SIGMA_DATA) -> float:
    """The network's `sigma_data` (an EDMPrecond's, also through a DDP wrapper); `default`, EDM's
    0.5, for a network that has none: a VPPrecond, the test beds' analytic denoisers."""
    while not hasattr(net, "sigma_data") and isinstance(getattr(net, "module", None), nn.Module):
        net = net.module
    return float(getattr(net, "sigma_data", default))


# -- the noise schedule and its grids -------------------------------------------------------------


def karras_sigma(f: Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Karras' schedule as a continuous function: sigma(f) = (a + f (b - a))^rho with
    a = sigma_max^(1/rho), b = sigma_min^(1/rho); sigma(0) = sigma_max, sigma(1) = sigma_min.
    Computed in ``f``'s dtype."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + f * (b - a)) ** rho


def karras_sigmas(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """EDM's N-step grid in float64, large to small, with the trailing 0 (length N + 1):
    sigma_i = sigma(i / (N - 1)) for i = 0..N-1, then 0. A 1-step grid is [sigma_max, 0]."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    f = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)
    sigmas = karras_sigma(f, sigma_min, sigma_max, rho)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_points(
    num_points: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """The N points of EDM's N-step grid without its final 0, float64, sigma_max down to sigma_min
    (both included): consistency models' t_N > ... > t_1 = epsilon."""
    return karras_sigmas(num_points, sigma_min, sigma_max, rho, device=device)[:-1]


def karras_ascending(num_points: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0,
                     rho: float = 7.0) -> Tensor:
    """`karras_points` from SMALL to LARGE (index 0 is sigma_min): DMD2's EDM code indexes its
    1000-point grid this way, so "index uniform in [20, 980]" keeps clear of both ends."""
    return karras_points(num_points, sigma_min, sigma_max, rho).flip(0)


def nested_sigmas(
    num_steps: int, *, final_zero: bool = True, sigma_min: float = 0.002, sigma_max: float = 80.0,
    rho: float = 7.0, device: torch.device | str | None = None,
) -> Tensor:
    """A progressive student's N-step grid, float64, length N + 1: sigma(i/N) for i = 0..N-1, then
    0 (or sigma_min without ``final_zero``). Halving N keeps every other point, so a student's grid
    lies inside its 2N-step teacher's; EDM's `karras_sigmas(N)` (spaced i/(N-1)) does not nest
    (`nested_sigmas(N)` is `karras_sigmas(N + 1)` with its sigma_min point dropped)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    f = torch.arange(num_steps + 1, dtype=torch.float64, device=device) / num_steps
    sigmas = karras_sigma(f, sigma_min, sigma_max, rho)
    if final_zero:
        sigmas[-1] = 0.0
    return sigmas


def adjacent_points(
    n: int, num_points: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
    index: Tensor | None = None, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(t, t2) = (grid[k], grid[k + 1]) of `karras_points(num_points)`, each [n, 1, 1, 1], t > t2,
    for k uniform in {0, ..., N-2} per sample (or the given ``index`` [n]): consistency training's pairs."""
    if num_points < 2:
        raise ValueError(f"a grid of adjacent points needs at least 2 points, got {num_points}")
    grid = karras_points(num_points, sigma_min, sigma_max, rho, device=device)
    if index is None:
        index = torch.randint(0, num_points - 1, (n,), device=grid.device, generator=generator)
    index = torch.as_tensor(index, device=grid.device).reshape(-1)
    if index.numel() != n or int(index.min()) < 0 or int(index.max()) > num_points - 2:
        raise ValueError(f"index must hold {n} values in [0, {num_points - 2}]")
    t, t2 = grid[index], grid[index + 1]
    return t.reshape(-1, 1, 1, 1).to(dtype), t2.reshape(-1, 1, 1, 1).to(dtype)


def edm_training_sigma(n: int, p_mean: float = -1.2, p_std: float = 1.2,
                       device: torch.device | str = "cpu") -> Tensor:
    """EDM's training noise levels: ln sigma ~ N(p_mean, p_std^2), shape [n, 1, 1, 1]."""
    return (torch.randn(n, 1, 1, 1, device=device) * p_std + p_mean).exp()


# -- loss weights ---------------------------------------------------------------------------------


def edm_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """EDM's loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2: the weighted denoising
    error is then of unit variance at every noise level."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_weight_snr(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """The same weight written as SNR + 1/sd^2 = 1/sigma^2 + 1/sd^2, as DMD2's code computes it
    (it rounds differently from `edm_weight`)."""
    return sigma**-2 + 1.0 / sigma_data**2


def truncated_snr_weight(sigma: Tensor) -> Tensor:
    """Progressive distillation's "truncated SNR" weight max(alpha^2/sigma^2, 1) in EDM's form
    (alpha = 1): max(1/sigma^2, 1)."""
    return (1 / sigma**2).clamp(min=1.0)


# -- steps of the probability-flow ODE ------------------------------------------------------------


def per_sample_sigma(sigma: Tensor | float, x: Tensor) -> tuple[Tensor, Tensor]:
    """A noise level (a number, 0-d, [B] or [B,1,1,1]) in ``x``'s dtype as ([B] for the network,
    [B,1,...] to broadcast against ``x``)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    flat = s.expand(x.shape[0]) if s.numel() == 1 else s
    if flat.numel() != x.shape[0]:
        raise ValueError(f"sigma has {flat.numel()} values for a batch of {x.shape[0]}")
    return flat, flat.reshape(-1, *([1] * (x.ndim - 1)))


def euler_step(net: Denoiser, x: Tensor, s_from: Tensor | float, s_to: Tensor | float,
               labels: Tensor | None = None) -> Tensor:
    """One Euler (DDIM) step: x + (s_to - s_from) (x - D(x, s_from)) / s_from (1 NFE).

    Sigmas are per sample ([B] or [B,1,1,1]) or shared (a number). Where s_to = 0 the step is
    exactly D(x, s_from) (the formula's value, without its rounding). Returns ``x``'s dtype: a
    float64 ``x`` gives a float64 state."""
    s_flat, s_col = per_sample_sigma(s_from, x)
    _, to_col = per_sample_sigma(s_to, x)
    denoised = net(x, s_flat, labels).to(x.dtype)
    stepped = x + (to_col - s_col) * (x - denoised) / s_col
    return torch.where(to_col == 0, denoised, stepped)


def heun_step(net: Denoiser, x: Tensor, s_from: Tensor | float, s_to: Tensor | float,
              labels: Tensor | None = None) -> Tensor:
    """One step of EDM's Algorithm 1: the Euler step x' = x + (s_to - s_from) d with
    d = (x - D(x, s_from)) / s_from, then the trapezoidal correction with d' at (x', s_to),
    x + (s_to - s_from)(d + d')/2, except where s_to = 0, which stays Euler.

    Sigmas are per sample or shared, as in `euler_step`. A shared s_to = 0 costs 1 NFE (EDM's last
    step: 2N - 1 on an N-step grid); per-sample sigmas always cost 2 (the correction is evaluated
    at 1 where s_to = 0, ln 0 being no input for c_noise, and discarded). Returns ``x``'s dtype."""
    s_flat, s_col = per_sample_sigma(s_from, x)
    to_flat, to_col = per_sample_sigma(s_to, x)
    d = (x - net(x, s_flat, labels).to(x.dtype)) / s_col
    x_next = x + (to_col - s_col) * d
    if torch.as_tensor(s_to).numel() == 1:
        if float(s_to) == 0:
            return x_next
        d2 = (x_next - net(x_next, to_flat, labels).to(x.dtype)) / to_col
        return x + (to_col - s_col) * (0.5 * d + 0.5 * d2)
    safe_flat, safe_col = (torch.where(s == 0, torch.ones_like(s), s) for s in (to_flat, to_col))
    d2 = (x_next - net(x_next, safe_flat, labels).to(x.dtype)) / safe_col
    return torch.where(to_col == 0, x_next, x + (to_col - s_col) * (0.5 * d + 0.5 * d2))


# -- samplers (the signature: sidbench.samplers) --------------------------------------------------


@register_sampler("one_step")
def sample_one_step(net: Denoiser, noise: Tensor, labels: Tensor | None, sigmas: Tensor) -> Tensor:
    """One network call at sigmas[0]: the one-step generator D(sigma z, sigma) (1 NFE).

    SiD's sigma_init 2.5, DMD's 80. Keeps the graph: the one-step methods train through it."""
    if len(sigmas) != 1:
        raise RecipeError(f"the one_step sampler takes one sigma, got sigmas {list(map(float, sigmas))}")
    sigma = float(sigmas[0])
    s = torch.full((noise.shape[0],), sigma, device=noise.device, dtype=noise.dtype)
    return net(noise * sigma, s, labels)


@register_sampler("heun")
@torch.no_grad()
def sample_heun(net: Denoiser, noise: Tensor, labels: Tensor | None, sigmas: Tensor) -> Tensor:
    """EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) on sigmas (2N - 1 NFE on N + 1 points ending at 0).

    x = sigmas[0] z, then `heun_step` down the grid, in float64 as EDM's code; returns ``noise``'s dtype."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=noise.device)
    x = noise.to(torch.float64) * sigmas[0]
    for s_from, s_to in zip(sigmas[:-1], sigmas[1:]):
        x = heun_step(net, x, s_from, s_to, labels)
    return x.to(noise.dtype)


@register_sampler("euler")
@torch.no_grad()
def sample_euler(net: Denoiser, noise: Tensor, labels: Tensor | None, sigmas: Tensor) -> Tensor:
    """Euler (DDIM) steps of the probability-flow ODE on sigmas: a progressive student's sampler (1 NFE a step).

    Euler, not Heun: the student learned that one of its Euler steps t -> t3 lands where its teacher's
    two land; on `nested_sigmas(N)` an N-step student follows its 2N-step teacher. x = sigmas[0] z,
    float64 state; returns ``noise``'s dtype."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=noise.device)
    x = noise.to(torch.float64) * sigmas[0]
    for s_from, s_to in zip(sigmas[:-1], sigmas[1:]):
        x = euler_step(net, x, s_from, s_to, labels)
    return x.to(noise.dtype)


#: tag of the consistency sampler's noise streams
CONSISTENCY_NOISE = 0xC0FFEE


def per_sample_noise(z: Tensor, steps: int, stream: int = CONSISTENCY_NOISE) -> Tensor:
    """[steps, *z.shape] standard-normal noise, sample i's from a generator seeded by a hash of
    z[i]'s values: the same z gives the same noise in any batch, on any run."""
    out = torch.empty((steps, *z.shape), dtype=z.dtype, device=z.device)
    rows = z.detach().to("cpu", torch.float32).contiguous().numpy()
    for i, row in enumerate(rows):
        seed = mix(stream, int.from_bytes(hashlib.sha256(row.tobytes()).digest()[:8], "little"))
        g = torch.Generator(device=z.device).manual_seed(seed)
        out[:, i] = torch.randn((steps, *z.shape[1:]), generator=g, dtype=z.dtype, device=z.device)
    return out


def consistency_function(net: nn.Module | Denoiser, sigma_min: float) -> nn.Module | Denoiser:
    """f around an EDM network: `ConsistencyParam(net, sigma_min)`, sharing its weights (a saved
    consistency function is an ordinary EDM weight file). A `ConsistencyParam` (training holds
    one) and any function that is not an EDM network (an analytic consistency function) are f
    already and are returned as they are; a VPPrecond is refused (`ConsistencyParam` says why)."""
    if isinstance(net, Precond):  # (a ConsistencyParam borrows Precond.forward but is no Precond)
        return ConsistencyParam(net, sigma_min=sigma_min)
    return net


@register_sampler("consistency")
@torch.no_grad()
def sample_consistency(net: nn.Module, noise: Tensor, labels: Tensor | None, sigmas: Tensor, *,
                       sigma_min: float) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) at sigmas, boundary sigma_min (1 NFE a sigma).

    f = `consistency_function(net, sigma_min)`; x = f(s_0 z, s_0), then x = f(x + sqrt(s^2 - s_min^2) n, s)
    for each further s: x is a sample at level s_min, so the added variance brings it to s. The
    fresh noise n of sample i is `per_sample_noise` of z_i: reproducible, whatever the batch."""
    sigma_min = float(sigma_min)
    s = [float(v) for v in sigmas]
    if not s or any(v < sigma_min for v in s):
        raise RecipeError(f"the consistency sampler needs sigmas >= sigma_min = {sigma_min}, got {s}")
    f = consistency_function(net, sigma_min)
    fresh = per_sample_noise(noise, len(s) - 1) if len(s) > 1 else None

    def level(v: float) -> Tensor:
        return torch.full((noise.shape[0],), v, dtype=noise.dtype, device=noise.device)

    x = f(noise * s[0], level(s[0]), labels)
    for k, v in enumerate(s[1:]):
        x = f(x + math.sqrt(v**2 - sigma_min**2) * fresh[k].to(x.dtype), level(v), labels)
    return x


def heun_sample(net: Denoiser, z: Tensor, labels: Tensor | None = None, num_steps: int = 18,
                sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """A teacher's sample: `sample_heun` on `karras_sigmas(num_steps)` (2N - 1 NFE), the grid
    computed on ``z``'s device."""
    return sample_heun(net, z, labels, karras_sigmas(num_steps, sigma_min, sigma_max, rho, device=z.device))


# -- recipes --------------------------------------------------------------------------------------


def sample(net: nn.Module | Denoiser, noise: Tensor, labels: Tensor | None, recipe: Mapping[str, Any]) -> Tensor:
    """Images from ``noise`` with ``net``, following ``recipe``: the sampler it names, called with
    its sigmas (float64, on the CPU) and its other arguments. A recipe that does not fit its
    sampler's arguments is one line (`RecipeError`)."""
    recipe = read_recipe(recipe)
    sampler = SAMPLERS.get(str(recipe["sampler"]))
    sigmas = torch.tensor([float(s) for s in recipe.get("sigmas", [])], dtype=torch.float64)
    options = sampler_arguments(recipe)
    check_arguments(sampler, recipe, options)
    return sampler(net, noise, labels, sigmas, **options)


def check_arguments(sampler: Callable[..., Tensor], recipe: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """`RecipeError` unless ``sampler`` takes (net, noise, labels, sigmas, **options)."""
    try:
        inspect.signature(sampler).bind(None, None, None, None, **options)
    except TypeError as e:
        raise RecipeError(f"recipe {dict(recipe)} does not fit the {recipe['sampler']!r} sampler "
                          f"{inspect.signature(sampler)}: {e}") from None
