"""Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) in EDM's sigma form, as pure functions.

Symbols as in the paper and docs/baselines.md#progressive-distillation, with EDM's variance-exploding noising
(Karras et al. 2022, arXiv 2206.00364), where DDIM is the Euler method on the probability-flow ODE
dx/ds = (x - D(x, s)) / s:
  N          number of student steps in the current stage (the teacher has 2N)
  t, t2, t3  sigma(i/N), sigma((i+0.5)/N), sigma((i+1)/N): one student step, two teacher steps
  x_t        x + t n (x a data image or a teacher sample)
  x_t3       the teacher's two Euler steps x_t -> x_t2 -> x_t3
  x_tilde    the denoiser output that makes ONE Euler step t -> t3 land on x_t3 (the target)

The grid. sigma(f) is Karras' schedule read as a continuous function of f in [0, 1]: f = 0 gives
sigma_max, f = 1 gives sigma_min. An N-step student samples on sigma(i/N), i = 0..N-1, and then on a
final point, sigma_min or 0 (`final_zero`); the two references differ here:
  - `final_zero=False`: the last point is sigma(1) = sigma_min, as in the authors' EDM-form code
    (openai/consistency_models_cifar10, training and sampling); the sample then carries
    sigma_min = 0.002 of noise, a quarter of a uint8 level. The method's config default.
  - `final_zero=True` (these functions' default): the last step ends at 0, as in the paper's
    original form, whose last step returns the x prediction at t = 0, and as EDM's sampler's grid
    ends. An Euler step to 0 returns D(x, s) itself, so a 1-step student is
    x = D(sigma_max z, sigma_max), the one-step generator form of SiD and DMD.
Either way, halving N keeps every other point, so the teacher's 2N-step grid contains the
student's: the student of one stage samples on exactly the points its loss trained it on, and
becomes the teacher of the next stage on the same points.
The student's sampling grid is `sidbench.diffusion.nested_sigmas(N)`, as are the schedule
(`karras_sigma`), the Euler step (`euler_step`) and the loss weight (`truncated_snr_weight`).

Losses are returned UNREDUCED (same shape as the image); the method reduces them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sidbench.diffusion import Denoiser, euler_step, karras_sigma, per_sample_sigma, truncated_snr_weight

__all__ = ["stage_sigmas", "sample_stage_sigmas", "progressive_target", "teacher_target", "progressive_loss"]


def stage_sigmas(
    num_steps: int,
    i: Tensor,
    *,
    final_zero: bool = True,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """(t, t2, t3) = (sigma(i/N), sigma((i+0.5)/N), sigma((i+1)/N)), each of shape [B, 1, 1, 1],
    for integer step indices ``i`` [B] in [0, N-1]. With ``final_zero`` the last step (i = N-1)
    ends at t3 = 0 (see the module docstring); t2 is then sigma((N-0.5)/N) > 0, as always."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    i = torch.as_tensor(i)
    if i.numel() and (int(i.min()) < 0 or int(i.max()) >= num_steps):
        raise ValueError(f"step indices must lie in [0, {num_steps - 1}], got [{int(i.min())}, {int(i.max())}]")
    f = i.to(torch.float64).reshape(-1, 1, 1, 1) / num_steps  # computed in float64, cast at the end
    step = 1.0 / num_steps
    t, t2, t3 = (karras_sigma(f + k * step, sigma_min, sigma_max, rho) for k in (0.0, 0.5, 1.0))
    if final_zero:
        t3 = torch.where(i.reshape(-1, 1, 1, 1) == num_steps - 1, torch.zeros_like(t3), t3)
    return t.to(dtype), t2.to(dtype), t3.to(dtype)


def sample_stage_sigmas(
    n: int,
    num_steps: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    **grid: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """`stage_sigmas` at a step index drawn uniformly from {0, ..., N-1} per sample; ``grid`` holds
    `stage_sigmas`' keywords (final_zero, sigma_min, sigma_max, rho, dtype), passed on unchanged."""
    i = torch.randint(0, num_steps, (n,), device=device, generator=generator)
    return stage_sigmas(num_steps, i, **grid)


def progressive_target(x_t: Tensor, t: Tensor, x_t3: Tensor, t3: Tensor) -> Tensor:
    """x_tilde = x_t - t (x_t3 - x_t) / (t3 - t): the D at (x_t, t) whose Euler step t -> t3 lands on x_t3.

    (The paper's x_tilde = (z_t3 - (sigma_t3/sigma_t) z_t) / (alpha_t3 - (sigma_t3/sigma_t) alpha_t)
    with alpha = 1, sigma = t.) Check: x_t + (t3 - t)(x_t - x_tilde)/t = x_t + (x_t3 - x_t) = x_t3.
    """
    x_tilde = x_t - t * (x_t3 - x_t) / (t3 - t)  # t > t3 >= 0: the divisor is never 0
    # t3 = 0: x_t - t (x_t3 - x_t) / (0 - t) = x_t + (x_t3 - x_t) = x_t3. Return it exactly, so the
    # last step's target is the teacher's own x_t3 = D(x_t2, t2) with no rounding from the formula.
    return torch.where(t3 == 0, x_t3, x_tilde)


@torch.no_grad()
def teacher_target(
    teacher: Denoiser, x_t: Tensor, t: Tensor, t2: Tensor, t3: Tensor, labels: Tensor | None = None
) -> Tensor:
    """x_tilde from the teacher's two Euler steps x_t -> x_t2 -> x_t3 (2 NFE, no graph).

    The steps run with a float64 state: the target divides x_t3 - x_t by t3 - t, which near
    sigma_min at N = 4096 is about 0.6% of t, so float32 rounding of x_t3 would be amplified ~160x.
    Returns ``x_t``'s dtype.
    """
    x = x_t.to(torch.float64)
    t, t2, t3 = (s.to(torch.float64) for s in (t, t2, t3))
    x_t2 = euler_step(teacher, x, t, t2, labels)
    x_t3 = euler_step(teacher, x_t2, t2, t3, labels)
    _, t_col = per_sample_sigma(t, x)
    _, t3_col = per_sample_sigma(t3, x)
    return progressive_target(x, t_col, x_t3, t3_col).to(x_t.dtype)


def progressive_loss(denoised: Tensor, x_tilde: Tensor, t: Tensor) -> Tensor:
    """max(1/t^2, 1) (D_student(x_t, t) - x_tilde)^2 per element: the paper's "truncated SNR"
    weight max(alpha^2/sigma^2, 1), with SNR = 1/t^2 in EDM's form. ``t`` broadcasts ([B,1,1,1])."""
    return truncated_snr_weight(t) * (denoised - x_tilde) ** 2
