"""DMD / DMD2 loss formulas at fixed draws (docs/baselines.md#distribution-matching); expected values
by hand or autograd."""
from __future__ import annotations

import math

import pytest
import torch

from sidbench.diffusion import karras_ascending
from sidbench.methods.baselines.dmd.loss import (
    distribution_matching_loss, dm_gradient, dmd_fake_score_loss, gan_discriminator_loss, gan_generator_loss,
    sample_grid_sigma,
)


def _karras_small_to_large(i: int, n: int = 1000, lo: float = 0.002, hi: float = 80.0, rho: float = 7.0) -> float:
    """sigma at index i of the grid read from sigma_min (i = 0) to sigma_max (i = n-1), by hand."""
    a, b = lo ** (1 / rho), hi ** (1 / rho)
    return (a + i / (n - 1) * (b - a)) ** rho


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# -- grid -----------------------------------------------------------------------------------------


def test_grid_runs_small_to_large_with_karras_values() -> None:
    grid = karras_ascending()
    assert grid.shape == (1000,)
    assert math.isclose(float(grid[0]), 0.002, rel_tol=1e-12)
    assert math.isclose(float(grid[-1]), 80.0, rel_tol=1e-12)
    assert bool((grid[1:] > grid[:-1]).all())
    for i in (20, 500, 980):
        assert math.isclose(float(grid[i]), _karras_small_to_large(i), rel_tol=1e-10)
    # the ends of the DM loss's index range, as numbers: ~0.00323 and ~72.05
    assert 0.0032 < float(grid[20]) < 0.0033 and 72.0 < float(grid[980]) < 72.1


def test_grid_sigma_draw_is_uniform_on_the_inclusive_index_range() -> None:
    grid = karras_ascending()
    gen = torch.Generator().manual_seed(0)
    s = sample_grid_sigma(20000, grid, 20, 980, generator=gen)
    assert s.shape == (20000, 1, 1, 1) and s.dtype == torch.float32
    idx = torch.searchsorted(grid.float(), s.flatten())  # grid values are distinct: recover the index
    torch.testing.assert_close(grid.float()[idx], s.flatten())
    assert int(idx.min()) == 20 and int(idx.max()) == 980  # both ends included
    assert abs(float(idx.double().mean()) - 500.0) < 5.0  # uniform: mean index (20 + 980) / 2

    whole = torch.searchsorted(grid.float(), sample_grid_sigma(50000, grid, 0, 999, generator=gen).flatten())
    assert int(whole.min()) == 0 and int(whole.max()) == 999


def test_grid_sigma_rejects_a_range_outside_the_grid() -> None:
    with pytest.raises(ValueError, match="not inside"):
        sample_grid_sigma(4, karras_ascending(), 20, 1000)
    with pytest.raises(ValueError, match="not inside"):
        sample_grid_sigma(4, karras_ascending(), 30, 20)


# -- distribution matching ------------------------------------------------------------------------


def test_dm_loss_gradient_is_normalised_score_difference_over_numel() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    mu_real, mu_fake = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    loss, keep = distribution_matching_loss(x, mu_real, mu_fake)
    assert loss.ndim == 0 and keep.tolist() == [True, True, True]
    loss.backward()

    xd = x.detach()
    expected = torch.empty_like(xd)
    for i in range(3):  # the doc's second form: (mu_fake - mu_real) / mean|x - mu_real|, per sample
        expected[i] = (mu_fake[i] - mu_real[i]) / (xd[i] - mu_real[i]).abs().mean()
    torch.testing.assert_close(x.grad, expected / xd.numel())
    torch.testing.assert_close(dm_gradient(xd, mu_real, mu_fake), expected)
    torch.testing.assert_close(loss, 0.5 * (expected**2).mean())  # value: 0.5 mean(grad^2)


def test_dm_loss_is_zero_when_the_two_scores_agree() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    mu = torch.randn(2, 3, 4, 4)
    loss, _ = distribution_matching_loss(x, mu, mu.clone())
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(x.grad.abs().max()) == 0.0


def test_dm_loss_sends_no_gradient_into_the_score_networks() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    mu_real = torch.randn(2, 1, 4, 4, requires_grad=True)
    mu_fake = torch.randn(2, 1, 4, 4, requires_grad=True)
    distribution_matching_loss(x, mu_real, mu_fake)[0].backward()
    assert mu_real.grad is None and mu_fake.grad is None


def test_dm_descent_moves_x_toward_the_teacher() -> None:
    # mu_fake = x (the fake score sees x as typical): grad = (x - mu_real) / mean|x - mu_real|
    x = torch.tensor([[[[1.0, -1.0], [3.0, 0.0]]]], requires_grad=True)
    mu_real = torch.zeros(1, 1, 2, 2)
    distribution_matching_loss(x, mu_real, x.detach().clone())[0].backward()
    mean_abs = (1 + 1 + 3 + 0) / 4
    torch.testing.assert_close(x.grad, x.detach() / mean_abs / 4)
    stepped = x.detach() - 0.1 * x.grad
    assert float((stepped - mu_real).abs().sum()) < float((x.detach() - mu_real).abs().sum())


def test_dm_normaliser_is_floored_when_the_teacher_reproduces_x() -> None:
    x = torch.ones(1, 1, 2, 2)
    mu_fake = torch.full((1, 1, 2, 2), 0.5)
    grad = dm_gradient(x, x.clone(), mu_fake)  # mean|p_real| = 0 -> floor 1e-5
    torch.testing.assert_close(grad, torch.full_like(x, -0.5 / 1e-5))
    assert bool(torch.isfinite(grad).all())


def test_dm_gradient_keeps_nan_visible() -> None:
    x = torch.zeros(2, 1, 2, 2)
    mu_real = torch.ones(2, 1, 2, 2)
    mu_fake = torch.zeros(2, 1, 2, 2)
    mu_fake[1, 0, 0, 0] = float("nan")
    grad = dm_gradient(x, mu_real, mu_fake)
    assert bool(torch.isfinite(grad[0]).all()) and not bool(torch.isfinite(grad[1]).all())


@pytest.mark.parametrize("where,bad", [("mu_real", float("nan")), ("mu_real", float("inf")),
                                       ("mu_fake", float("nan")), ("mu_fake", -float("inf"))])
def test_dm_loss_drops_a_sample_with_non_finite_scores_and_keeps_the_others_exactly(where: str, bad: float) -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    mu = {"mu_real": torch.randn(3, 2, 4, 4), "mu_fake": torch.randn(3, 2, 4, 4)}
    clean, keep = distribution_matching_loss(x, mu["mu_real"], mu["mu_fake"])
    (clean_grad,) = torch.autograd.grad(clean, x)
    assert keep.all()
    mu[where][1, 1, 2, 3] = bad  # one element of sample 1
    loss, keep = distribution_matching_loss(x, mu["mu_real"], mu["mu_fake"])
    assert keep.tolist() == [True, False, True]
    (grad,) = torch.autograd.grad(loss, x)
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(grad).all())
    # the dropped sample passes nothing; the kept ones pass what they passed before, bit for bit
    # (the mean still divides by all 3 samples' elements)
    assert float(grad[1].abs().max()) == 0.0
    assert torch.equal(grad[[0, 2]], clean_grad[[0, 2]])
    by_hand = 0.5 * (dm_gradient(x.detach(), mu["mu_real"], mu["mu_fake"])[[0, 2]] ** 2).sum() / x.numel()
    torch.testing.assert_close(loss, by_hand)


def test_dm_loss_of_a_non_finite_x_is_dropped_from_the_value() -> None:
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 1, 1] = float("nan")
    loss, keep = distribution_matching_loss(x, torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))
    assert keep.tolist() == [False, True]
    torch.testing.assert_close(loss, torch.tensor(0.5 * 4 * 1.0 / 8))  # sample 1: grad = 1 everywhere


# -- fake score -----------------------------------------------------------------------------------


def test_fake_score_loss_weight_is_snr_plus_inverse_sigma_data_squared() -> None:
    denoised, x = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    sigma = torch.tensor([0.5, 2.0]).reshape(2, 1, 1, 1)
    got = dmd_fake_score_loss(denoised, x, sigma, 0.5)
    assert got.shape == (2, 1, 2, 2)
    torch.testing.assert_close(got[0], torch.full((1, 2, 2), 4.0 + 4.0))  # 1/0.25 + 1/0.25
    torch.testing.assert_close(got[1], torch.full((1, 2, 2), 0.25 + 4.0))  # 1/4 + 1/0.25
    # (denoised - x)^2 scales it: a residual of 3 multiplies by 9
    torch.testing.assert_close(dmd_fake_score_loss(denoised * 3, x, sigma, 0.5), got * 9)
    # another sigma_data
    torch.testing.assert_close(dmd_fake_score_loss(denoised, x, sigma, sigma_data=1.0)[1], torch.full((1, 2, 2), 1.25))


# -- GAN ------------------------------------------------------------------------------------------


def test_gan_losses_at_zero_logits_are_log_two() -> None:
    zero = torch.zeros(5)
    torch.testing.assert_close(gan_discriminator_loss(zero, zero), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(gan_generator_loss(zero), torch.tensor(math.log(2)))


def test_gan_losses_match_hand_values() -> None:
    l_real, l_fake = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 3.0])
    disc = (_softplus(0.0) + _softplus(3.0)) / 2 + (_softplus(-2.0) + _softplus(1.0)) / 2
    gen = (_softplus(-0.0) + _softplus(-3.0)) / 2
    torch.testing.assert_close(gan_discriminator_loss(l_real, l_fake), torch.tensor(disc))
    torch.testing.assert_close(gan_generator_loss(l_fake), torch.tensor(gen))

    # gradients: d softplus(v)/dv = sigmoid(v); the head is pushed to raise l_real, lower l_fake
    l_real.requires_grad_(True), l_fake.requires_grad_(True)
    gan_discriminator_loss(l_real, l_fake).backward()
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    torch.testing.assert_close(l_real.grad, torch.tensor([-sig(-2.0) / 2, -sig(1.0) / 2]))
    torch.testing.assert_close(l_fake.grad, torch.tensor([sig(0.0) / 2, sig(3.0) / 2]))

