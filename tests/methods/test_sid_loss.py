"""SiD's loss formulas at fixed draws (arXiv 2404.04057, docs/sid.md#losses)."""
from __future__ import annotations

import math

import torch

from sidbench.methods.nonfinite import finite_samples
from sidbench.diffusion import karras_sigma
from sidbench.methods.sid.loss import fake_score_loss, generator_loss, generator_sigma


def test_generator_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    x_g, y_real, y_fake = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    alpha = 1.2
    got = generator_loss(x_g, y_real, y_fake, alpha)
    for i in range(3):
        w = max(float((x_g[i] - y_real[i]).abs().mean()), 1e-5)
        expected = (y_real[i] - y_fake[i]) * ((y_real[i] - x_g[i]) - alpha * (y_real[i] - y_fake[i])) / w
        torch.testing.assert_close(got[i], expected)
    assert got.shape == x_g.shape


def test_generator_loss_weight_is_clipped_and_carries_no_gradient() -> None:
    x_g = torch.zeros(1, 1, 2, 2, requires_grad=True)
    y_real = torch.zeros(1, 1, 2, 2)  # |x_g - y_real| = 0: the weight must clip at 1e-5
    y_fake = torch.full((1, 1, 2, 2), 0.5)
    loss = generator_loss(x_g, y_real, y_fake, alpha=1.0)
    expected = (0 - 0.5) * ((0 - 0) - 1.0 * (0 - 0.5)) / 1e-5
    torch.testing.assert_close(loss, torch.full_like(loss, expected))
    # d/dx_g of (y_real - y_fake)(y_real - x_g)/w is -(y_real - y_fake)/w with w held fixed
    loss.sum().backward()
    torch.testing.assert_close(x_g.grad, torch.full_like(x_g, 0.5 / 1e-5))


def test_fake_score_loss_is_edm_weighted_denoising() -> None:
    denoised, x_g = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    sigma = torch.tensor([0.5, 2.0]).reshape(2, 1, 1, 1)
    got = fake_score_loss(denoised, x_g, sigma, 0.5)
    for i, s in enumerate([0.5, 2.0]):
        w = (s**2 + 0.25) / (s * 0.5) ** 2
        torch.testing.assert_close(got[i], torch.full((1, 2, 2), w))
    # the fake score's own sigma_data: sd = 1 gives (s^2 + 1) / s^2 = 5/4 at s = 2
    torch.testing.assert_close(fake_score_loss(denoised, x_g, sigma, 1.0)[1], torch.full((1, 2, 2), 5.0 / 4))


def sigma_from_u(u: torch.Tensor) -> torch.Tensor:
    """Karras' schedule read backwards: u = 0 gives sigma_min, u = 1 sigma_max."""
    return karras_sigma(1 - u)


def test_sigma_draw_covers_published_range() -> None:
    assert math.isclose(float(sigma_from_u(torch.tensor(0.0))), 0.002, rel_tol=1e-5)
    top = float(sigma_from_u(torch.tensor(0.8)))
    assert 24.0 < top < 24.5  # "about 24.4" for t_max = 800
    torch.manual_seed(0)
    s = generator_sigma(20000, t_max=800)
    assert s.shape == (20000, 1, 1, 1)
    assert float(s.min()) >= 0.002 - 1e-7 and float(s.max()) <= top + 1e-4
    # u is uniform: the median of u is 0.4
    assert math.isclose(float(s.median()), float(sigma_from_u(torch.tensor(0.4))), rel_tol=0.05)


def test_nan_sample_is_dropped_and_others_unchanged() -> None:
    from sidbench.methods.nonfinite import drop_nonfinite

    torch.manual_seed(1)
    x_g, y_real, y_fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    clean_total, dropped = drop_nonfinite(generator_loss(x_g, y_real, y_fake, 1.2), x_g, y_real, y_fake)
    assert dropped == 0
    y_fake_bad = y_fake.clone()
    y_fake_bad[2, 0, 1, 1] = float("nan")
    total, dropped = drop_nonfinite(generator_loss(x_g, y_real, y_fake_bad, 1.2), x_g, y_real, y_fake_bad)
    assert dropped == 1
    keep = torch.tensor([True, True, False, True])
    expected = generator_loss(x_g, y_real, y_fake, 1.2)[keep].sum()
    torch.testing.assert_close(total, expected)
    assert finite_samples(x_g, y_real, y_fake_bad).tolist() == keep.tolist()
