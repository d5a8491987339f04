"""The analytic test bed for f-distill and Uni-Instruct: a 1-D generator x = m + a z trained by each
method's own loss functions toward the data law N(MU, S^2), with every denoiser and the density
ratio exact (`sidbench.testing.gaussian_1d`: the fake score is the generator's own exact denoiser,
the discriminator the optimal one, logit = log p_t / q_t), the noise levels drawn as each method
draws them. Every divergence must bring (m, a) to (MU, S).

The plugins' own networks cannot run here (the GAN head and SiDA's discriminator need an EDM
network's bottleneck); what is tested is that the gradient the plugins form (the weights of
`f_distill_weights` on DMD's gradient; `uni_instruct_loss.generator_loss`) leads to the target.
DMD's and SiD's per-sample normalisers (a mean of |x - D_real(x_t)| over the pixels) are degenerate
in one dimension: |x - D_real| has a density at 0, so its inverse has no mean, and Adam, which follows
the sign of heavy-tailed noise more than its mean, settles off the target (Uni-Instruct's Jeffreys
stopped at a = 0.551 with them). The tests replace them by 1 (the normaliser of images, a mean over
many pixels, has no such tail). Monte Carlo with a fixed seed; tolerance 0.03 on m and a, which
start 0.5 and 0.3 away."""
from __future__ import annotations

import math

import pytest
import torch

from sidbench.diffusion import karras_ascending
from sidbench.methods.baselines.dmd.f_distill_loss import RatioNormaliser, f_distill_weights, weighted_distribution_matching_loss
from sidbench.methods.baselines.dmd.loss import sample_grid_sigma
from sidbench.methods.baselines.dmd.settings import F_DISTILL_DIVERGENCES
from sidbench.methods.sid.loss import generator_sigma
from sidbench.methods.sid.settings import UNI_INSTRUCT_DIVERGENCES
from sidbench.methods.sid.uni_instruct_loss import density_ratio, generator_loss
from sidbench.testing.gaussian_1d import denoiser, log_ratio

MU, S = 0.3, 0.5
START = (-0.2, 0.8)
BATCH, STEPS, LR = 1024, 300, 0.02
TOLERANCE = 0.03


def train(step_loss) -> tuple[float, float]:  # noqa: ANN001 - loss(m, a) -> scalar
    torch.manual_seed(0)
    m = torch.tensor(START[0], dtype=torch.float64, requires_grad=True)
    log_a = torch.tensor(math.log(START[1]), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([m, log_a], lr=LR)
    for i in range(STEPS):
        if i == STEPS * 3 // 4:  # a smaller last step, as a schedule would, so the noise of the last steps is small
            for g in opt.param_groups:
                g["lr"] = LR / 10
        opt.zero_grad()
        step_loss(m, log_a.exp()).backward()
        opt.step()
    return float(m.detach()), float(log_a.detach().exp())


@pytest.mark.parametrize("name", F_DISTILL_DIVERGENCES)
def test_f_distill_brings_the_generator_to_the_data(name: str) -> None:
    grid = karras_ascending(1000).double()
    normaliser = RatioNormaliser(10, 0.002, 80.0, ema_rate=0.5)

    def loss(m: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        sigma = sample_grid_sigma(BATCH, grid, 20, 980).double()
        x = m + a * torch.randn(BATCH, 1, 1, 1, dtype=torch.float64)
        x_t = x.detach() + sigma * torch.randn_like(x)
        mu_real = denoiser(x_t, MU, S**2, sigma)
        mu_fake = denoiser(x_t, m.detach(), a.detach() ** 2, sigma)
        logits = log_ratio(x_t, MU, S**2, m.detach(), a.detach() ** 2, sigma).reshape(-1)
        weights = f_distill_weights(logits, sigma, name, normaliser)
        weights = weights * (x.detach() - mu_real).abs().reshape(-1).clamp(min=1e-5)  # undo DMD's normaliser (docstring)
        dm, keep = weighted_distribution_matching_loss(x, mu_real, mu_fake, weights)
        assert keep.all()
        return dm

    m, a = train(loss)
    assert abs(m - MU) < TOLERANCE and abs(a - S) < TOLERANCE, f"{name}: (m, a) = ({m:.4f}, {a:.4f})"


@pytest.mark.parametrize("name", UNI_INSTRUCT_DIVERGENCES)
def test_uni_instruct_brings_the_generator_to_the_data(name: str) -> None:
    def loss(m: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        sigma = generator_sigma(BATCH, 800).double()
        x_g = m + a * torch.randn(BATCH, 1, 1, 1, dtype=torch.float64)
        x_t = x_g + sigma * torch.randn_like(x_g)
        y_real = denoiser(x_t, MU, S**2, sigma)
        y_fake = denoiser(x_t, m.detach(), a.detach() ** 2, sigma)  # frozen, differentiated through x_t
        ratio = density_ratio(log_ratio(x_t, MU, S**2, m.detach(), a.detach() ** 2, sigma)).double()
        return generator_loss(x_g, y_real, y_fake, ratio, sigma, name, wf=torch.ones_like(sigma)).sum() / BATCH

    m, a = train(loss)
    assert abs(m - MU) < TOLERANCE and abs(a - S) < TOLERANCE, f"{name}: (m, a) = ({m:.4f}, {a:.4f})"
