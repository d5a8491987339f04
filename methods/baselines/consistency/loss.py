"""Consistency distillation (Song et al. 2023, arXiv 2303.01469) on EDM networks, as pure functions.

Symbols as in the paper and docs/baselines.md#consistency-distillation:
  f_theta(x, s)  the consistency function c_skip(s) x + c_out(s) F_theta(c_in(s) x, c_noise(s))
  s_min          the boundary, epsilon in the paper (0.002): f(x, s_min) = x
  t > t2         adjacent points t_{n+1} > t_n of the N-point Karras grid (N = 18 CIFAR-10, 40 ImageNet-64)
  x_t            x + t n; x_t2 one Heun step of the teacher's probability-flow ODE from x_t
  theta-         the target network, an EMA of theta with rate mu
Loss d(f_theta(x_t, t), stopgrad f_theta-(x_t2, t2)) per sample, the paper's weight lambda = 1:
`sidbench.methods.baselines.distance.image_distance` ("l2" or "lpips"), with the target computed
under no_grad.

The network F is EDM's raw UNet (`net.model` of an EDMPrecond), so the teacher's weights
initialise the consistency function unchanged, with the precond's own c_in and c_noise; only
c_skip, c_out change, and they differ from EDM's (Karras et al. 2022, arXiv 2206.00364) by the
s_min offset alone.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sidbench.methods.baselines.progressive.loss import _per_sample
from sidbench.teachers.networks import EDMPrecond, Precond, build_edm_network
from sidbench.teachers.sampling import karras_sigmas

__all__ = [
    "consistency_coefficients", "ConsistencyParam", "CONSISTENCY_PARAM",
    "consistency_constructor", "build_consistency_network", "grid_points", "adjacent_grid_points",
    "heun_teacher_step", "ema_update_", "multistep_consistency_sample",
]

Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]

#: Value of the constructor key "param" that marks a saved consistency function.
CONSISTENCY_PARAM = "consistency"


def consistency_coefficients(s: Tensor, sigma_min: float = 0.002, sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) = (sd^2 / ((s - s_min)^2 + sd^2), (s - s_min) sd / sqrt(s^2 + sd^2)).

    At s = s_min: c_skip = 1, c_out = 0 exactly, so f(x, s_min) = x (the boundary condition) for
    any F; with s_min = 0 they are EDM's c_skip and c_out."""
    sd2 = sigma_data**2
    c_skip = sd2 / ((s - sigma_min) ** 2 + sd2)
    c_out = (s - sigma_min) * sigma_data / (s**2 + sd2).sqrt()
    return c_skip, c_out


class ConsistencyParam(nn.Module):
    """f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s), labels) around an EDMPrecond's F.

    ``net.model`` (F) becomes this module's ``model``, shared, not copied: the state_dict keys are
    the EDM network's ("model.*"), so a teacher state_dict loads with strict=True and a saved
    consistency function is an ordinary EDM weight file. c_in and c_noise come from the precond's
    own `coefficients` (c_in = 1/sqrt(s^2 + sd^2), c_noise = ln(s)/4): the teacher's weights see
    the inputs they were trained on. The precond is kept as a plain attribute, not a submodule, so
    it adds no keys; it holds no weights of its own besides ``model``.

    Rebuilt from a file by `build_consistency_network` on the EDM constructor plus
    ``"param": "consistency"`` (`consistency_constructor` writes it).
    Only EDMPrecond: a VPPrecond's F predicts noise (c_out = -sigma), which these c_skip, c_out
    would not turn into a consistency function.
    """

    def __init__(self, net: nn.Module, sigma_min: float = 0.002) -> None:
        super().__init__()
        if not isinstance(net, EDMPrecond):
            raise ValueError(f"ConsistencyParam needs an EDMPrecond network, got {type(net).__name__}")
        self.model = net.model
        object.__setattr__(self, "_edm", net)  # not registered: no "_edm." prefix in the state_dict
        self.sigma_min = float(sigma_min)
        self.sigma_data = net.sigma_data
        self.img_resolution, self.img_channels, self.label_dim = net.img_resolution, net.img_channels, net.label_dim
        self.use_fp16, self.augment_dim = net.use_fp16, net.augment_dim

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out) of the consistency parametrisation, (c_in, c_noise) of the EDMPrecond."""
        _, _, c_in, c_noise = self._edm.coefficients(sigma)
        return (*consistency_coefficients(sigma, self.sigma_min, self.sigma_data), c_in, c_noise)

    #: f(x, sigma): EDMPrecond's input handling (labels, sigma shapes, fp16 on CUDA, float32 out)
    #: around these coefficients.
    forward = Precond.forward


def consistency_constructor(edm_constructor: Mapping[str, Any], sigma_min: float = 0.002) -> dict[str, Any]:
    """The constructor to save with a consistency function: the EDM one plus
    ``"param": "consistency"`` and ``"consistency_sigma_min"``. `build_edm_network` rejects the
    extra keys, so a loader that does not know them fails loudly instead of building a plain
    denoiser from the same weights."""
    return {**edm_constructor, "param": CONSISTENCY_PARAM, "consistency_sigma_min": float(sigma_min)}


def build_consistency_network(constructor: Mapping[str, Any]) -> ConsistencyParam:
    """Inverse of `consistency_constructor`: build the EDM network from the remaining keys and wrap
    it (random weights; load the saved state_dict into the result with strict=True)."""
    kwargs = dict(constructor)
    param = kwargs.pop("param", None)
    if param != CONSISTENCY_PARAM:
        raise ValueError(f"constructor has param={param!r}, expected {CONSISTENCY_PARAM!r}")
    sigma_min = float(kwargs.pop("consistency_sigma_min", 0.002))
    return ConsistencyParam(build_edm_network(kwargs), sigma_min=sigma_min)


def grid_points(
    num_points: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """The N-point Karras grid from sigma_max down to sigma_min (both included, no trailing 0),
    float64: EDM's N-step grid without its final 0, the paper's t_N > ... > t_1 = epsilon."""
    if num_points < 2:
        raise ValueError(f"a consistency grid needs at least 2 points, got {num_points}")
    return karras_sigmas(num_points, sigma_min, sigma_max, rho, device=device)[:-1]


def adjacent_grid_points(
    n: int,
    num_points: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    index: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(t, t2) = (grid[k], grid[k + 1]), each [n, 1, 1, 1], with t > t2, for k uniform in
    {0, ..., N-2} per sample (or the given ``index`` [n])."""
    grid = grid_points(num_points, sigma_min, sigma_max, rho, device=device)
    if index is None:
        index = torch.randint(0, num_points - 1, (n,), device=grid.device, generator=generator)
    index = torch.as_tensor(index, device=grid.device).reshape(-1)
    if index.numel() != n or int(index.min()) < 0 or int(index.max()) > num_points - 2:
        raise ValueError(f"index must hold {n} values in [0, {num_points - 2}]")
    t, t2 = grid[index], grid[index + 1]
    return t.reshape(-1, 1, 1, 1).to(dtype), t2.reshape(-1, 1, 1, 1).to(dtype)


@torch.no_grad()
def heun_teacher_step(
    teacher: Denoiser, x_t: Tensor, t: Tensor | float, t2: Tensor | float, labels: Tensor | None = None
) -> Tensor:
    """x_t2: one Heun step of dx/ds = (x - D(x, s)) / s from t to t2 with per-sample sigmas (2 NFE).

    `sidbench.teachers.sampling.heun_step` takes one shared sigma (it branches on ``s_next > 0``),
    hence this per-sample version. Where t2 = 0 the step stays Euler (EDM's last step). Returns
    ``x_t``'s dtype, without a graph (the teacher is frozen; the target is stop-gradient).
    """
    t_flat, t_col = _per_sample(t, x_t)
    t2_flat, t2_col = _per_sample(t2, x_t)
    d = (x_t - teacher(x_t, t_flat, labels).to(x_t.dtype)) / t_col
    x_euler = x_t + (t2_col - t_col) * d
    # Evaluate the correction at 1 where t2 = 0 (ln 0 would poison c_noise), then discard it there.
    t2_safe_flat, t2_safe_col = (torch.where(s == 0, torch.ones_like(s), s) for s in (t2_flat, t2_col))
    d2 = (x_euler - teacher(x_euler, t2_safe_flat, labels).to(x_t.dtype)) / t2_safe_col
    x_heun = x_t + (t2_col - t_col) * 0.5 * (d + d2)
    return torch.where(t2_col == 0, x_euler, x_heun)


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, mu: float) -> None:
    """theta- <- mu theta- + (1 - mu) theta, in place and without a graph; buffers are copied.
    mu in [0, 1) (0 on CIFAR-10: the target is the online network itself, copied exactly)."""
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"mu must lie in [0, 1), got {mu}")
    online_params = dict(online.named_parameters())
    target_params = dict(target.named_parameters())
    if online_params.keys() != target_params.keys():
        raise ValueError("target and online networks have different parameters")
    for name, p_target in target_params.items():
        if mu == 0.0:
            p_target.copy_(online_params[name])
        else:
            p_target.lerp_(online_params[name], 1.0 - mu)  # p + (1 - mu)(q - p) = mu p + (1 - mu) q
    # The networks' buffers are constant resampling filters: copy, never average.
    online_buffers = dict(online.named_buffers())
    for name, b_target in target.named_buffers():
        b_target.copy_(online_buffers[name])


@torch.no_grad()
def multistep_consistency_sample(
    f: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    z: Tensor,
    labels: Tensor | None,
    sigmas: Sequence[float] | Tensor,
    sigma_min: float = 0.002,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The paper's multistep sampling: x = f(sigma_0 z, sigma_0); then for each next s:
    x = f(x + sqrt(s^2 - s_min^2) n, s) with fresh n ~ N(0, I). One sigma is one-step sampling.

    x is a sample at noise level s_min, so adding variance s^2 - s_min^2 brings it to level s.
    Noise comes from ``generator`` if given (else torch's global generator); len(sigmas) NFE.
    """
    sigmas = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)]
    if not sigmas:
        raise ValueError("sigmas is empty")
    if any(s < sigma_min for s in sigmas):
        raise ValueError(f"every sigma must be >= sigma_min = {sigma_min}, got {sigmas}")

    def level(s: float, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)

    x = f(z * sigmas[0], level(sigmas[0], z), labels)
    for s in sigmas[1:]:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = f(x + math.sqrt(s**2 - sigma_min**2) * noise, level(s, x), labels)
    return x
