"""The DMD and DMD2 losses as pure functions (DMD: arXiv 2311.18828, DMD2: arXiv 2405.14867).

Symbols as in the papers and SPEC section 5 (EDM form: x_t = x + sigma n, alpha_t = 1):
  x        generated image G_theta(80 z, 80, labels)
  mu_real  teacher denoiser mu_real(x_t, sigma)            (no gradient)
  mu_fake  fake-score denoiser mu_fake(x_t, sigma)          (no gradient)
  p        x - mu, so p_real - p_fake = mu_fake - mu_real
  l_real, l_fake   GAN head logits on (noised) real and generated images, one per image
Reduction: the distribution-matching loss comes back REDUCED (a scalar, mean over every element),
because its published normalisation is "the gradient w.r.t. x is grad / numel"; the GAN losses are
reduced means as published; the fake-score and regression losses come back unreduced (per element,
per sample) for the method to reduce in one visible place, as SiD's losses do.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from sidbench.teachers.sampling import karras_sigmas

SIGMA_DATA = 0.5
#: floor of the per-sample normaliser mean|p_real| (the same floor SiD puts on its weight)
NORMALISER_FLOOR = 1e-5
#: LPIPS backbones: lpips' name -> torchvision weights whose file lpips loads from torch's hub cache
_LPIPS_BACKBONES = {
    "alex": "AlexNet_Weights.IMAGENET1K_V1",
    "vgg": "VGG16_Weights.IMAGENET1K_V1",
    "squeeze": "SqueezeNet1_1_Weights.IMAGENET1K_V1",
}


class LPIPSUnavailableError(RuntimeError):
    """LPIPS was asked for but the `lpips` package or its weights are not on this machine."""


# -- noise levels ---------------------------------------------------------------------------------


def karras_grid(
    num_points: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """The `num_points`-point Karras grid in float64, ordered from SMALL to LARGE sigma.

    Index 0 is sigma_min and index num_points-1 is sigma_max: DMD2's EDM code indexes its
    1000-point grid this way, so "index uniform in [20, 980]" keeps clear of both ends.
    """
    # karras_sigmas runs large -> small and appends sigma_N = 0: drop the 0, then reverse
    return karras_sigmas(num_points, sigma_min, sigma_max, rho)[:-1].flip(0)


def sample_grid_sigma(
    n: int,
    grid: torch.Tensor,
    low: int,
    high: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample sigma [n, 1, 1, 1] (float32) = grid[i], i uniform on {low, ..., high} (inclusive).

    DMD's DM loss uses [20, 980]; the fake-score loss and every GAN logits evaluation use the
    whole grid [0, len(grid) - 1]. `generator` draws on the CPU (reproducible across devices).
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
    a teacher that reproduces x exactly gives a large finite step, not inf/NaN; non-finite values
    in mu_real or mu_fake are NOT zeroed here, so the method can see and drop such samples.
    """
    with torch.no_grad():
        p_real = x - mu_real
        p_fake = x - mu_fake
        normaliser = p_real.abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        return (p_real - p_fake) / normaliser.clamp(min=NORMALISER_FLOOR)


def distribution_matching_loss(x: torch.Tensor, mu_real: torch.Tensor, mu_fake: torch.Tensor) -> torch.Tensor:
    """L_DM = 0.5 * mean((x - stopgrad(x - grad))^2), a scalar (mean over ALL elements).

    Its value is 0.5 * mean(grad^2), and its gradient w.r.t. x is exactly grad / x.numel(): the
    surrogate that carries DMD's gradient through autograd into G_theta. Returned reduced because
    the published weights (3e-3 on DMD2's generator GAN loss) are relative to this mean.
    """
    target = (x - dm_gradient(x, mu_real, mu_fake)).detach()
    return 0.5 * ((x - target) ** 2).mean()


def dmd_fake_score_loss(
    denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float = SIGMA_DATA
) -> torch.Tensor:
    """Fake-score denoising loss per element: (1/sigma^2 + 1/sd^2) * (mu_fake(x_t) - x)^2.

    The weight is EDM's Karras weighting (sigma^2 + sd^2) / (sigma sd)^2 written as SNR + 1/sd^2.
    `x` is the generated image, detached by the caller; `sigma` broadcasts ([B, 1, 1, 1]).
    """
    weight = sigma**-2 + 1.0 / sigma_data**2
    return weight * (denoised - x) ** 2


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


# -- regression on (noise, teacher sample) pairs (DMD v1) -----------------------------------------


def regression_loss(
    x: torch.Tensor,
    target: torch.Tensor,
    distance: str = "l2",
    *,
    adapt_gray: bool = False,
    lpips_net: str = "vgg",
    lpips_resize: int | None = 224,
) -> torch.Tensor:
    """DMD's regression loss per sample [B]: d(G(z_ref), y_ref), y_ref the teacher's ODE sample from z_ref.

    distance "l2": mean over pixels of (x - target)^2. distance "lpips": the LPIPS distance of the
    `lpips` package (images in [-1, 1], as lpips expects), backbone `lpips_net`; both images are
    first resized bilinearly to `lpips_resize` x `lpips_resize` (None: as they are), because the
    ImageNet backbones cannot run on 8x8 or 32x32 inputs. LPIPS needs RGB: a 1-channel image is
    repeated to 3 channels only when `adapt_gray=True` (a change of metric the caller must opt into).
    """
    if x.shape != target.shape:
        raise ValueError(f"regression_loss: x has shape {tuple(x.shape)} but target {tuple(target.shape)}")
    if distance == "l2":
        return ((x - target) ** 2).flatten(1).mean(dim=1)
    if distance != "lpips":
        raise ValueError(f"unknown regression distance {distance!r}; expected 'l2' or 'lpips'")

    channels = x.shape[1]
    if channels == 1:
        if not adapt_gray:
            raise ValueError(
                "LPIPS needs 3-channel images; set adapt_gray=True to repeat the 1-channel teacher's images to RGB")
        x, target = x.repeat(1, 3, 1, 1), target.repeat(1, 3, 1, 1)
    elif channels != 3:
        raise ValueError(f"LPIPS needs 1- or 3-channel images, got {channels} channels")
    if lpips_resize is not None and x.shape[-2:] != (lpips_resize, lpips_resize):
        size = (lpips_resize, lpips_resize)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        target = F.interpolate(target, size=size, mode="bilinear", align_corners=False)
    model = _lpips_model(lpips_net).to(x.device)
    return model(x.float(), target.float()).reshape(x.shape[0])


@functools.lru_cache(maxsize=None)
def _lpips_model(net: str) -> torch.nn.Module:
    """The frozen LPIPS network, loaded once per backbone; checks every file first (no download)."""
    if net not in _LPIPS_BACKBONES:
        raise ValueError(f"unknown LPIPS backbone {net!r}; expected one of {sorted(_LPIPS_BACKBONES)}")
    try:
        import lpips
    except ImportError as e:
        raise LPIPSUnavailableError(
            "regression distance 'lpips' needs the `lpips` package: pip install lpips (or use distance 'l2')") from e

    # lpips ships its linear layers in the package; the backbone comes from torch's hub cache,
    # and this machine may have no network: check the file instead of letting torchvision try.
    linear = Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"
    if not linear.is_file():
        raise LPIPSUnavailableError(f"LPIPS linear weights missing: {linear} (reinstall the `lpips` package)")
    from torchvision.models import get_weight

    weights_name = _LPIPS_BACKBONES[net]
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / Path(get_weight(weights_name).url).name
    if not backbone.is_file():
        raise LPIPSUnavailableError(
            f"LPIPS backbone weights not found offline: put torchvision's {weights_name} file at {backbone}")
    model = lpips.LPIPS(net=net, verbose=False)
    model.eval().requires_grad_(False)  # a fixed metric: gradients flow to the images only
    return model
