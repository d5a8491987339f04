"""The DMD and DMD2 losses as pure functions (DMD: arXiv 2311.18828, DMD2: arXiv 2405.14867).

Symbols as in the papers and docs/baselines.md#distribution-matching (EDM form: x_t = x + sigma n,
alpha_t = 1):
  x        generated image G_theta(80 z, 80, labels)
  mu_real  teacher denoiser mu_real(x_t, sigma)            (no gradient)
  mu_fake  fake-score denoiser mu_fake(x_t, sigma)          (no gradient)
  p        x - mu, so p_real - p_fake = mu_fake - mu_real
  l_real, l_fake   GAN head logits on (noised) real and generated images, one per image
Reduction: the distribution-matching loss comes back REDUCED (a scalar, mean over every element),
because its published normalisation is "the gradient w.r.t. x is grad / numel"; it comes with the
samples it kept (a sample whose gradient is not finite counts as 0 and passes no gradient); the GAN
losses are reduced means as published; the fake-score loss comes back unreduced (per element) for
the method to reduce in one visible place, as SiD's losses do.
DMD's regression loss d(G(z_ref), y_ref), y_ref the teacher's ODE sample from z_ref, is
`sidbench.methods.baselines.distance.image_distance` (per sample, "l2" or "lpips").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sidbench.diffusion import edm_weight_snr
from sidbench.methods.nonfinite import finite_samples, zero_dropped

#: floor of the per-sample normaliser mean|p_real| (the same floor SiD puts on its weight)
NORMALISER_FLOOR = 1e-5


# -- noise levels ---------------------------------------------------------------------------------


def sample_grid_sigma(
    n: int,
    grid: torch.Tensor,
    low: int,
    high: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample sigma [n, 1, 1, 1] (float32) = grid[i], i uniform on {low, ..., high} (inclusive).

    `grid` is `sidbench.diffusion.karras_ascending(1000)` (index 0 is sigma_min). DMD's DM loss uses
    [20, 980]; the fake-score loss and every GAN logits evaluation use the whole grid
    [0, len(grid) - 1]. `generator` draws on the CPU (reproducible across devices).
    """
    if not 0 <= low <= high < len(grid):
        raise ValueError(f"grid index range [{low}, {high}] is not inside [0, {len(grid) - 1}]")
    index = torch.randint(low, high + 1, (n,), generator=generator)
    return grid[index].to(device=device, dtype=torch.float32).reshape(n, 1, 1, 1)


# -- distribution matching (DMD, used unchanged by DMD2) ------------------------------------------


def dm_gradient(x: torch.Tensor, mu_real: torch.Tensor, mu_fake: torch.Tensor) -> torch.Tensor:
    """DMD's per-element gradient on x, without graph: grad = (p_real - p_fake) / mean|p_real|.

    The mean is over the pixels (C, H, W) of each sample: DMD's weight sigma^2 CS / ||mu_real - x||_1
    times the score difference (mu_fake - mu_real) / sigma^2. It is floored at NORMALISER_FLOOR so
    a teacher that reproduces x exactly gives a large finite step, not inf/NaN (the authors' code
    has no floor; docs/baselines.md#non-finite-samples says why the two agree in practice);
    non-finite values in mu_real or mu_fake are NOT zeroed here, so the caller can see and drop
    such samples.
    """
    with torch.no_grad():
        p_real = x - mu_real
        p_fake = x - mu_fake
        normaliser = p_real.abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        return (p_real - p_fake) / normaliser.clamp(min=NORMALISER_FLOOR)


def distribution_matching_loss(
    x: torch.Tensor, mu_real: torch.Tensor, mu_fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_DM, keep): L_DM = 0.5 * mean((x - stopgrad(x - grad))^2), a scalar (mean over ALL elements).

    Its value is 0.5 * mean(grad^2), and its gradient w.r.t. x is exactly grad / x.numel(): the
    surrogate that carries DMD's gradient through autograd into G_theta. Returned reduced because
    the published weights (3e-3 on DMD2's generator GAN loss) are relative to this mean.
    `keep` [B] marks the samples whose x and grad are finite (grad is not finite wherever mu_real
    or mu_fake is not); the others count as 0 in the mean, which still divides by every element,
    and pass no gradient to x: their grad is set to 0 before the stop-gradient target is formed,
    so a non-finite score output never reaches the backward pass (a non-finite x is in G's own
    graph: see `sidbench.methods.nonfinite`).
    """
    grad = dm_gradient(x, mu_real, mu_fake)
    keep = finite_samples(x.detach(), grad)
    target = (x - zero_dropped(grad, keep)).detach()
    return 0.5 * zero_dropped((x - target) ** 2, keep).mean(), keep


def dmd_fake_score_loss(denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Fake-score denoising loss per element: (1/sigma^2 + 1/sd^2) * (mu_fake(x_t) - x)^2.

    The weight is EDM's Karras weighting (sigma^2 + sd^2) / (sigma sd)^2 written as SNR + 1/sd^2
    (`sidbench.diffusion.edm_weight_snr`, at the fake score's sigma_data). `x` is the generated
    image, detached by the caller; `sigma` broadcasts ([B, 1, 1, 1]).
    """
    return edm_weight_snr(sigma, sigma_data) * (denoised - x) ** 2


# -- GAN (DMD2) -----------------------------------------------------------------------------------


def gan_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Head (and fake-score encoder) loss: mean softplus(l_fake) + mean softplus(-l_real).

    Non-saturating logistic loss: -log(1 - sigmoid(l_fake)) - log sigmoid(l_real). Each term is
    averaged over its own batch; with equal batches this is DMD2's mean(softplus(l_f) + softplus(-l_r)).
    """
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator's non-saturating GAN loss: mean softplus(-l_fake) = mean -log sigmoid(l_fake)."""
    return F.softplus(-logits_fake).mean()

