"""Continuous-time consistency distillation (sCD; Lu & Song 2024, arXiv 2410.11081) over EDM
networks, as pure functions.

TrigFlow, in the paper's symbols (sd = sigma_data):
  x_t = cos(t) x_0 + sin(t) z,  z ~ N(0, sd^2 I),  t in [0, pi/2]
  f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t / sd, t)           the consistency function
  dx_t/dt = sd F_teacher(x_t / sd, t)                          the teacher's probability-flow ODE
An EDM denoiser D(x, sigma) (x = x_0 + sigma n) is a TrigFlow model at t = atan(sigma / sd):
x_t = cos(t) x_sigma, sigma = sd tan(t), and F = (cos(t) x_t - D(x_t / cos t, sd tan t)) / (sd sin t)
makes f = D. (With EDM's preconditioning this F is minus the raw UNet's output at c_in x =
x_t / sd, c_noise = ln(sd tan t) / 4: EDM's c_skip, c_out, c_in at sigma = sd tan t are cos^2 t,
sd sin t and cos(t) / sd. The published sCD runs used TrigFlow-trained teachers; on EDM teachers
every setting is derived.)

The training signal (the paper's Algorithm 1 in NVIDIA FastGen's arrangement,
fastgen/methods/consistency_model/sCM.py), F- = stopgrad F_theta:
  g = -cos^2(t) (sd F- - dx_t/dt) - r cos(t) sin(t) (x_t + sd dF-/dt)
      = cos(t) df-/dt at r = 1 (df-/dt along the teacher's ODE: zero for the exact f)
  dF-/dt = (d/dt) F-(x_t, t) along (dx_t/dt, 1), a forward-mode JVP of the student
  r = min(1, iteration / warmup)           the tangent's warm-up (10k iterations)
  g <- g / (||g|| + c), c = 0.1             tangent normalisation (FastGen: ||g|| / sqrt(D))
  L = w(t) / (e^logvar D) ||F_theta - F- - g||^2 + logvar, w(t) = 1 / (sd tan t)
      (FastGen: the squared error's mean over the D elements, divided by D once more)
with logvar from a small head on t (the paper's adaptive weighting, -w_phi(t) in its symbols).
The sampled sigma is lognormal, ln sigma ~ N(P_mean, P_std^2) truncated to [sigma_min, sigma_max]
(FastGen draws it by the inverse CDF), t = atan(sigma / sd): the paper's "lognormal in tan space".

Networks are callables: a denoiser `D(x, sigma [n], labels)` (EDM's convention) for the student and
the teacher. The JVP runs the student in float32 (autocast off) from a given random state, so that
it drops the units the forward dropped.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from sidbench.diffusion import SIGMA_DATA
from sidbench.methods.baselines.consistency import rng
from sidbench.methods.baselines.scd.settings import TANGENT_NORMS  # rms: ||g|| / sqrt(D) (FastGen) | l2 (the paper)
from sidbench.teachers.networks.layers import FourierEmbedding, Linear, PositionalEmbedding

__all__ = [
    "SIGMA_DATA", "TANGENT_NORMS", "trigflow_time", "edm_sigma", "trigflow_from_edm", "edm_from_trigflow",
    "trigflow_noise", "denoiser_F", "consistency_from_F", "teacher_velocity", "sample_sigma", "tangent_jvp",
    "tangent", "normalize_tangent", "warmup_ratio", "scd_loss", "LogVarianceHead",
]

Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _col(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample value [n] (or [n, 1, ...]) shaped to broadcast over `like`'s sample dims."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def trigflow_time(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """t = atan(sigma / sd) in [0, pi/2) (atan2: exact at sigma = 0 and large sigma)."""
    return torch.atan2(sigma, torch.full_like(sigma, sigma_data))


def edm_sigma(t: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """sigma = sd tan(t): the EDM noise level with the same signal-to-noise ratio as TrigFlow's t."""
    return sigma_data * torch.tan(t)


def trigflow_from_edm(x_sigma: Tensor, t: Tensor) -> Tensor:
    """x_t = cos(t) x_sigma: EDM's x_0 + sigma n with n = z / sd, scaled to TrigFlow's variance."""
    return _col(torch.cos(t), x_sigma) * x_sigma


def edm_from_trigflow(x_t: Tensor, t: Tensor) -> Tensor:
    """x_sigma = x_t / cos(t), the inverse of `trigflow_from_edm`."""
    return x_t / _col(torch.cos(t), x_t)


def trigflow_noise(x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
    """x_t = cos(t) x_0 + sin(t) z (z ~ N(0, sd^2)), computed in t's precision and returned in x_0's
    (FastGen computes it in float64)."""
    dtype = torch.promote_types(x0.dtype, t.dtype)
    x = _col(torch.cos(t), x0).to(dtype) * x0.to(dtype) + _col(torch.sin(t), z).to(dtype) * z.to(dtype)
    return x.to(x0.dtype)


def denoiser_F(denoiser: Denoiser, x_t: Tensor, t: Tensor, labels: Tensor | None = None,
               sigma_data: float = SIGMA_DATA) -> Tensor:
    """TrigFlow's F of an EDM denoiser: (cos(t) x_t - D(x_t / cos t, sd tan t)) / (sd sin t).

    The TrigFlow <-> EDM arithmetic runs in float64 (as FastGen's TrigFlowPrecond), the network in
    its own precision on x_t's dtype; returns x_t's dtype. Differentiable in x_t and t (the JVP
    goes through it). t must lie in (0, pi/2): at 0 the division is 0/0."""
    t64 = t.to(torch.float64).reshape(-1)
    cos, sin = _col(torch.cos(t64), x_t), _col(torch.sin(t64), x_t)
    sigma = sigma_data * torch.tan(t64)
    x_sigma = (x_t.to(torch.float64) / cos).to(x_t.dtype)
    denoised = denoiser(x_sigma, sigma, labels)  # float64: EDM's networks cast it, an analytic one need not
    F = (cos * x_t.to(torch.float64) - denoised.to(torch.float64)) / (sigma_data * sin)
    return F.to(x_t.dtype)


def consistency_from_F(x_t: Tensor, t: Tensor, F: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """f = cos(t) x_t - sd sin(t) F: the consistency function's output (the denoised image), in
    x_t's dtype."""
    f = _col(torch.cos(t), x_t) * x_t - sigma_data * _col(torch.sin(t), x_t) * F
    return f.to(x_t.dtype)


@torch.no_grad()
def teacher_velocity(teacher: Denoiser, x_t: Tensor, t: Tensor, labels: Tensor | None = None,
                     sigma_data: float = SIGMA_DATA) -> Tensor:
    """dx_t/dt = sd F_teacher(x_t, t): the teacher's probability-flow ODE in TrigFlow time (sCD)."""
    return sigma_data * denoiser_F(teacher, x_t, t, labels, sigma_data)


def sample_sigma(n: int, p_mean: float = -1.0, p_std: float = 1.4, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, device: torch.device | str | None = None) -> Tensor:
    """[n] float64 noise levels, ln sigma ~ N(P_mean, P_std^2) truncated to [sigma_min, sigma_max]:
    one uniform draw u ~ U(Phi(a), Phi(b)) of shape [n] (float64, on the CPU), sigma = exp(P_mean +
    P_std Phi^-1(u)), as FastGen's EDMNoiseSchedule draws it. Published: (-1.0, 1.4); FastGen's
    ImageNet 64 sCD uses P_std 1.6."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    normal = torch.distributions.Normal(torch.tensor(p_mean, dtype=torch.float64),
                                        torch.tensor(p_std, dtype=torch.float64))
    lo = normal.cdf(torch.tensor(math.log(sigma_min), dtype=torch.float64))
    hi = normal.cdf(torch.tensor(math.log(sigma_max), dtype=torch.float64))
    u = torch.rand(n, dtype=torch.float64) * (hi - lo) + lo
    return normal.icdf(u).exp().clamp(sigma_min, sigma_max).to(device)


def tangent_jvp(
    F_fn: Callable[[Tensor, Tensor], Tensor],
    x_t: Tensor,
    t: Tensor,
    dxdt: Tensor,
    *,
    state: rng.RandomState | None = None,
    precision: torch.dtype = torch.float32,
) -> Tensor:
    """cos(t) sin(t) dF-/dt: the JVP of the student's F_fn(x_t, t) along (dx_t/dt, 1), scaled by
    cos(t) sin(t) before it is taken (the scaled tangent (cos t sin t dx_t/dt, cos t sin t) keeps
    it finite near t = pi/2, as FastGen does).

    `torch.func.jvp` with x_t in `precision` (float32: forward-mode AD is not trusted in half
    precision; float64 for analytic networks) and autocast off; t keeps its own dtype (float64 from
    `sample_sigma`: near pi/2, sigma = sd tan t amplifies t's rounding). Without a graph: the tangent
    is a stop-gradient target. With `state`, F_fn starts from that random state, so dropout keeps
    the forward's mask. Under DDP, F_fn may call the bare network or a wrapper that does not sync
    buffers in forward (`sidbench.distributed.wrap_ddp`; DDP's default copies buffers in place,
    which functorch refuses): tests/methods/test_scd_jvp.py."""
    scale = torch.cos(t) * torch.sin(t)
    x_in = x_t.to(precision)
    tangents = (_col(scale, dxdt).to(precision) * dxdt.to(precision), scale)

    def fn(x: Tensor, s: Tensor) -> Tensor:
        if state is not None:
            rng.restore(state)
        return F_fn(x, s)

    device_type = x_t.device.type
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        _, F_dot = torch.func.jvp(fn, (x_in, t), tangents)
    return F_dot


def tangent(F_minus: Tensor, F_dot: Tensor, x_t: Tensor, t: Tensor, dxdt: Tensor, ratio: float,
            sigma_data: float = SIGMA_DATA) -> Tensor:
    """g = -cos^2(t) (sd F- - dx_t/dt) - r (cos(t) sin(t) x_t + sd F_dot), F_dot = cos t sin t dF-/dt
    (`tangent_jvp`), in float64 as FastGen computes it."""
    t64 = t.to(torch.float64)
    cos, sin = _col(torch.cos(t64), x_t), _col(torch.sin(t64), x_t)
    first = -cos * cos * (sigma_data * F_minus.to(torch.float64) - dxdt.to(torch.float64))
    second = -(cos * sin * x_t.to(torch.float64) + sigma_data * F_dot.to(torch.float64))
    return first + ratio * second


def normalize_tangent(g: Tensor, c: float = 0.1, norm: str = "rms") -> Tensor:
    """g / (||g|| + c) per sample, ||g|| the L2 norm ("l2", the paper) or the L2 norm over
    sqrt(D), the root mean square ("rms", FastGen's default: invariant to the image size)."""
    if norm not in TANGENT_NORMS:
        raise ValueError(f"unknown tangent norm {norm!r}; use one of {', '.join(TANGENT_NORMS)}")
    size = torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim)), keepdim=True)
    if norm == "rms":
        size = size / math.sqrt(g[0].numel())
    return g / (size + c)


def warmup_ratio(iteration: int, warmup: int) -> float:
    """r = min(1, iteration / warmup) (FastGen counts iterations from 1 at the first update)."""
    if warmup <= 0:
        return 1.0
    return min(1.0, iteration / warmup)


def scd_loss(F: Tensor, g: Tensor, logvar: Tensor, sigma: Tensor, *, prior_weighting: bool = True,
             divide_by_dim: bool = True) -> Tensor:
    """Per-sample loss [n] (float64): w / (e^logvar K) mean((F - sg F - g)^2) + logvar.

    Its value is logvar plus a term whose VALUE is w mean(g^2) / (e^logvar K) (F - sg F is 0); its
    gradient to the student is -2 w g / (e^logvar K D) dF/dtheta, to the head 1 - that term.
    w = 1 / sigma (sigma = sd tan t, the paper's prior weighting 1 / (sd tan t)) or 1; K = D, the
    elements per sample, with `divide_by_dim` (FastGen's `divide_x_0_spatial_dim`: the mean over the
    D elements is divided by D again), else 1 (the paper: (1/D) ||.||^2 is that mean). `logvar`:
    [n] or [n, 1] from the log-variance head; `g` the normalised tangent."""
    F64 = F.to(torch.float64)
    residual = F64 - F64.detach() - g.to(torch.float64)
    mse = residual.square().mean(dim=tuple(range(1, F.ndim)))
    lv = logvar.to(torch.float64).reshape(-1)
    w = 1.0 / sigma.to(torch.float64).reshape(-1) if prior_weighting else torch.ones_like(lv)
    k = F[0].numel() if divide_by_dim else 1
    return w / (lv.exp() * k) * mse + lv


class LogVarianceHead(nn.Module):
    """logvar(t) of the adaptive weighting: one linear map of the noise embedding of the network's
    noise input c_noise = ln(sigma) / 4, sigma = sd tan t, to one number per sample.

    FastGen's EDM networks carry it as `logvar_linear`, Linear(noise channels -> 1) on the UNet's own
    `map_noise` features ([cos, sin], before DDPM++'s swap); here it is a network of its own (the
    student stays an EDM network whose weights load strictly), built by `for_network` with a copy
    of the student's noise embedding (no weights in the positional one; the Fourier one's
    frequencies are a buffer) and EDM's Linear initialisation (kaiming normal, bias 0), as FastGen's.
    """

    def __init__(self, embedding: nn.Module, channels: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.linear = Linear(channels, 1)

    @classmethod
    def for_network(cls, net: nn.Module) -> LogVarianceHead:
        """The head for an EDM network (`net.model.map_noise`): SongUNet (DDPM++) or DhariwalUNet."""
        embed = getattr(getattr(net, "model", None), "map_noise", None)
        if isinstance(embed, PositionalEmbedding):
            channels = embed.num_channels
        elif isinstance(embed, FourierEmbedding):
            channels = 2 * embed.freqs.numel()
        else:
            raise ValueError(f"{type(net).__name__} has no EDM noise embedding (net.model.map_noise)")
        return cls(copy.deepcopy(embed), channels)

    def forward(self, sigma: Tensor) -> Tensor:
        """logvar [n] at EDM noise levels `sigma` [n] (clamped at 1e-6 before the log, as FastGen)."""
        c_noise = (sigma.to(torch.float32).reshape(-1).clamp(min=1e-6).log() / 4)
        return self.linear(self.embedding(c_noise)).reshape(-1)
