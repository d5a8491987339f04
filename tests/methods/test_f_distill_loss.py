"""f-distill's pure pieces (methods/baselines/dmd/f_distill_loss.py) and the f-divergence table they
share with Uni-Instruct (methods/f_divergence.py): hand-computed values, reverse KL = DMD2 exactly,
and on 1-D Gaussians (every score and ratio exact) that the h-weighted DM gradient is the gradient
of D_f(p_t || q_t) for each divergence."""
from __future__ import annotations

import math

import pytest
import torch

from sidbench.methods.baselines.dmd.f_distill_loss import (
    EPS, RatioNormaliser, density_ratio, f_distill_weights, normalised_weights, weighted_distribution_matching_loss,
)
from sidbench.methods.baselines.dmd.loss import distribution_matching_loss, dm_gradient
from sidbench.methods.f_divergence import DIVERGENCES, divergence
from sidbench.testing.gaussian_1d import denoiser, hermite_nodes, log_ratio

NAMES = list(DIVERGENCES)


# -- the table ------------------------------------------------------------------------------------


def derivative(fn: object, r: torch.Tensor) -> torch.Tensor:
    """d fn / dr elementwise by autograd, kept differentiable (0 * r keeps constants in the graph)."""
    (g,) = torch.autograd.grad((fn(r) + 0 * r).sum(), r, create_graph=True)
    return g + 0 * r


@pytest.mark.parametrize("name", NAMES)
def test_h_is_r_squared_f_second_derivative_and_its_derivatives(name: str) -> None:
    div = divergence(name)
    r = torch.tensor([0.05, 0.3, 1.0, 2.5, 17.0], dtype=torch.float64, requires_grad=True)
    assert float(div.f(torch.ones(1, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-15)
    f2 = derivative(lambda t: derivative(div.f, t), r)
    torch.testing.assert_close(div.h(r), r**2 * f2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(div.dh(r), derivative(div.h, r), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(div.d2h(r), derivative(lambda t: derivative(div.h, t), r), rtol=1e-12, atol=1e-15)


def test_h_by_hand() -> None:
    r = torch.tensor([2.0, 4.0])
    expected = {"reverse_kl": [1, 1], "forward_kl": [2, 4], "jensen_shannon": [2 / 3, 4 / 5],
                "squared_hellinger": [math.sqrt(2) / 4, 0.5], "jeffreys": [3, 5], "chi_square": [8, 32]}
    assert set(expected) == set(DIVERGENCES)
    for name, values in expected.items():
        torch.testing.assert_close(divergence(name).h(r), torch.tensor(values, dtype=torch.float32), msg=name)


def test_unknown_divergence_names_the_choices() -> None:
    with pytest.raises(ValueError, match="forward_kl"):
        divergence("kl")


# -- the density ratio and its normalisation -------------------------------------------------------


def test_density_ratio_clamps_logit_then_ratio() -> None:
    logits = torch.tensor([0.0, math.log(4.0), 5.0, -5.0, 50.0], requires_grad=True)
    r = density_ratio(logits)
    torch.testing.assert_close(r, torch.tensor([1.0, 4.0, 20.0, 0.1, 20.0]))
    assert not r.requires_grad
    # several logits per image: their mean
    torch.testing.assert_close(density_ratio(torch.tensor([[0.0, 2.0], [1.0, 1.0]])), torch.full((2,), math.e))


def test_normaliser_by_hand() -> None:
    norm = RatioNormaliser(bins=2, sigma_min=0.0, sigma_max=10.0, ema_rate=0.5)
    out = norm(torch.tensor([2.0, 4.0, 10.0]), torch.tensor([1.0, 2.0, 7.0]))
    # bin 0: batch mean 3, average 0.5 * 1 + 0.5 * 3 = 2; bin 1: 0.5 * 1 + 0.5 * 10 = 5.5
    torch.testing.assert_close(norm.means, torch.tensor([2.0, 5.5]))
    torch.testing.assert_close(out, torch.tensor([2 / (2 + EPS), 4 / (2 + EPS), 10 / (5.5 + EPS)]))
    # a batch in bin 0 only leaves bin 1; sigmas outside the range go to the edge bins
    norm(torch.tensor([6.0, 2.0]), torch.tensor([-1.0, 0.5]).reshape(2, 1, 1, 1))
    torch.testing.assert_close(norm.means, torch.tensor([0.5 * 2 + 0.5 * 4, 5.5]))
    norm(torch.tensor([1.0]), torch.tensor([99.0]))
    torch.testing.assert_close(norm.means, torch.tensor([3.0, 0.5 * 5.5 + 0.5 * 1]))


def test_normaliser_ema_zero_uses_the_batch_alone() -> None:
    norm = RatioNormaliser(bins=1, sigma_min=0.0, sigma_max=1.0, ema_rate=0.0)
    norm(torch.tensor([5.0, 7.0]), torch.tensor([0.1, 0.2]))
    out = norm(torch.tensor([1.0, 3.0]), torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(norm.means, torch.tensor([2.0]))
    torch.testing.assert_close(out, torch.tensor([1.0, 3.0]) / (2 + EPS))


def test_normaliser_keeps_non_finite_ratios_out_of_its_averages() -> None:
    norm = RatioNormaliser(bins=1, sigma_min=0.0, sigma_max=1.0, ema_rate=0.5)
    out = norm(torch.tensor([float("nan"), 3.0]), torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(norm.means, torch.tensor([2.0]))
    assert out[0].isnan() and torch.isclose(out[1], torch.tensor(1.5))


def test_normaliser_state_round_trip_and_mismatch() -> None:
    a = RatioNormaliser(bins=3, ema_rate=0.9)
    a(torch.tensor([2.0, 8.0]), torch.tensor([1.0, 70.0]))
    b = RatioNormaliser(bins=3, ema_rate=0.9)
    b.load_state_dict(a.state_dict())
    ratio, sigma = torch.tensor([4.0, 1.0]), torch.tensor([30.0, 60.0])
    assert torch.equal(a(ratio, sigma), b(ratio, sigma)) and torch.equal(a.means, b.means)
    with pytest.raises(ValueError, match="bins"):
        RatioNormaliser(bins=4).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="ema_rate"):
        RatioNormaliser(ema_rate=1.0)


def test_reductions_go_through_the_hook() -> None:
    """Two processes with the same batch: summed counts and sums give one process's averages."""
    twice = lambda t: 2 * t  # noqa: E731 - an all-reduce over two identical processes
    ratio, sigma = torch.tensor([2.0, 4.0, 10.0]), torch.tensor([1.0, 2.0, 70.0])
    one, two = RatioNormaliser(ema_rate=0.5), RatioNormaliser(ema_rate=0.5)
    torch.testing.assert_close(one(ratio, sigma), two(ratio, sigma, twice))
    torch.testing.assert_close(normalised_weights(ratio), normalised_weights(ratio, twice))
    seen: list[torch.Tensor] = []
    normalised_weights(ratio, lambda t: seen.append(t) or t)
    assert len(seen) == 2  # the sum and the count


def test_normalised_weights_mean_one_over_finite_values() -> None:
    h = torch.tensor([1.0, 2.0, 6.0, float("inf")])
    w = normalised_weights(h)
    torch.testing.assert_close(w[:3], torch.tensor([1.0, 2.0, 6.0]) / (3 + EPS))


def test_weights_reverse_kl_exactly_one_others_mean_one() -> None:
    sigma = torch.tensor([0.5, 3.0, 20.0, 70.0]).reshape(-1, 1, 1, 1)
    logits = torch.tensor([-1.0, 0.0, 1.5, 3.0])
    norm = RatioNormaliser(ema_rate=0.5)
    assert torch.equal(f_distill_weights(None, sigma, "reverse_kl", norm), torch.ones(4))
    assert torch.equal(norm.means, torch.ones(10))
    for name in NAMES[1:]:
        w = f_distill_weights(logits, sigma, name, RatioNormaliser(ema_rate=0.5))
        assert float(w.mean()) == pytest.approx(1.0, abs=1e-5), name
    # without binning: h(r) / mean, by hand for forward KL (h = r)
    r = logits.exp().clamp(0.1, 20.0)  # e^3 is clamped to 20
    torch.testing.assert_close(f_distill_weights(logits, sigma, "forward_kl"), r / (r.mean() + EPS))
    with pytest.raises(ValueError, match="logits"):
        f_distill_weights(None, sigma, "jensen_shannon")
    with pytest.raises(ValueError, match="3 logits for 4"):
        f_distill_weights(logits[:3], sigma, "jensen_shannon")


def test_exact_log_ratio_as_logit_gives_h_of_the_exact_ratio() -> None:
    """A discriminator at its optimum has logit log(p/q): the weights are then h of the true ratio."""
    x = torch.linspace(-1.0, 1.0, 7, dtype=torch.float64)
    logit = log_ratio(x, 0.3, 0.25, -0.2, 0.64, 0.7)
    r = logit.exp()
    assert ((r > 0.1) & (r < 20)).all()
    for name in NAMES[1:]:
        h = divergence(name).h(r.float())
        torch.testing.assert_close(f_distill_weights(logit.float(), torch.ones(7), name), h / (h.mean() + EPS), msg=name)


# -- the weighted DM loss ---------------------------------------------------------------------------


def dm_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 4, 4, generator=gen)
    mu_real = x + 0.5 * torch.randn(4, 3, 4, 4, generator=gen)
    return x, mu_real, mu_real + 0.2 * torch.randn(4, 3, 4, 4, generator=gen)


def test_unit_weights_are_dmd2_bit_for_bit() -> None:
    x, mu_real, mu_fake = dm_inputs()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, keep_a = weighted_distribution_matching_loss(xa, mu_real, mu_fake, torch.ones(4))
    lb, keep_b = distribution_matching_loss(xb, mu_real, mu_fake)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb) and torch.equal(keep_a, keep_b) and torch.equal(xa.grad, xb.grad)


def test_weights_scale_each_samples_gradient() -> None:
    x, mu_real, mu_fake = dm_inputs(1)
    w = torch.tensor([0.5, 2.0, 0.0, 1.5])
    x.requires_grad_(True)
    loss, keep = weighted_distribution_matching_loss(x, mu_real, mu_fake, w)
    loss.backward()
    expected = w.reshape(-1, 1, 1, 1) * dm_gradient(x.detach(), mu_real, mu_fake) / x.numel()
    torch.testing.assert_close(x.grad, expected)
    assert keep.all()
    # a non-finite weight drops its sample (no gradient), the others keep theirs
    x.grad = None
    loss, keep = weighted_distribution_matching_loss(x, mu_real, mu_fake, torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    loss.backward()
    assert keep.tolist() == [True, False, True, True] and torch.isfinite(loss)
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))


# -- the Gaussian analytic bed ------------------------------------------------------------------------

MU, S2 = 0.3, 0.25  # data N(0.3, 0.5^2); generator N(m, a^2) from (m, a) = (-0.2, 0.8)


def f_divergence_gradient(name: str, sigma: float, z: torch.Tensor, n: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d/d(m, a) of D_f(p_t || q_t) = E_q[f(r)], every dependence on (m, a) live."""
    m, a = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (-0.2, 0.8))
    x_t = m + a * z + sigma * n
    d_f = (w * divergence(name).f(log_ratio(x_t, MU, S2, m, a**2, sigma).exp())).sum()
    return torch.stack(torch.autograd.grad(d_f, (m, a)))


def weighted_dm_gradient(h_of: object, sigma: float, z: torch.Tensor, n: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d/d(m, a) of the weighted DM loss with the exact ratio's h, divided by sigma^2, and with DMD's
    per-sample normaliser and the mean over samples replaced by the quadrature weights (through
    `weights`), so that it estimates E[h(r) (D_fake - D_real) dx/d(m, a)] / sigma^2."""
    m, a = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (-0.2, 0.8))
    x = (m + a * z).reshape(-1, 1, 1, 1)
    x_t = x.detach() + sigma * n.reshape(-1, 1, 1, 1)
    mu_real = denoiser(x_t, MU, S2, sigma)
    mu_fake = denoiser(x_t, m.detach(), a.detach() ** 2, sigma)  # the generator's own exact denoiser
    r = log_ratio(x_t, MU, S2, m.detach(), a.detach() ** 2, sigma).exp().reshape(-1)
    normaliser = (x.detach() - mu_real).abs().reshape(-1).clamp(min=1e-5)
    loss, keep = weighted_distribution_matching_loss(x, mu_real, mu_fake, h_of(r) * normaliser * w * len(w))
    assert keep.all()
    return torch.stack(torch.autograd.grad(loss, (m, a))) / sigma**2


@pytest.mark.parametrize("sigma", [0.7, 2.0])
@pytest.mark.parametrize("name", NAMES)
def test_weighted_dm_gradient_is_the_gradient_of_the_f_divergence(name: str, sigma: float) -> None:
    """f-distill's identity: grad D_f(p_t || q_t) = -E[h(r) (s_p - s_q) dx_t/dtheta], with
    s_p - s_q = (D_real - D_fake) / sigma^2, exact on the Gaussian pair."""
    z, n, w = hermite_nodes(40)
    exact = f_divergence_gradient(name, sigma, z, n, w)
    assert exact.abs().min() > 1e-3
    torch.testing.assert_close(weighted_dm_gradient(divergence(name).h, sigma, z, n, w), exact, rtol=1e-9, atol=1e-12)
    if name != "reverse_kl":  # the weight matters: DMD2's unweighted gradient is another
        unweighted = weighted_dm_gradient(torch.ones_like, sigma, z, n, w)
        assert not torch.allclose(unweighted, exact, rtol=0.05)


def test_dm_gradient_vanishes_at_the_target() -> None:
    """q = p: the fake score is the teacher, the ratio 1, and every weighted DM gradient 0."""
    z, n, w = hermite_nodes(20)
    x = (MU + math.sqrt(S2) * z).reshape(-1, 1, 1, 1).requires_grad_(True)
    x_t = x.detach() + 0.7 * n.reshape(-1, 1, 1, 1)
    mu = denoiser(x_t, MU, S2, 0.7)
    for name in NAMES:
        weights = f_distill_weights(torch.zeros(len(z)), torch.full((len(z),), 0.7), name, RatioNormaliser())
        loss, _ = weighted_distribution_matching_loss(x, mu, mu.clone(), weights)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.equal(grad, torch.zeros_like(grad)), name
