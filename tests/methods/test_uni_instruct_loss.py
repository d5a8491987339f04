"""Uni-Instruct's generator loss (methods/sid/uni_instruct_loss.py): hand-computed weights, reverse
KL = SiD's alpha = 0.5 loss, forward KL = r times SiD's alpha = 1 loss plus a DMD-type term, and on
1-D Gaussians (every score and the ratio exact) that the loss's gradient is the gradient of the
expanded divergence E_q[0.5 h(r) |D_real - D_fake|^2] at one noise level, for each divergence,
while dropping any of its three terms is not."""
from __future__ import annotations

import math

import pytest
import torch

from sidbench.methods.f_divergence import DIVERGENCES, divergence
from sidbench.methods.sid.loss import generator_loss as sid_generator_loss
from sidbench.methods.sid.loss import normaliser
from sidbench.methods.sid.uni_instruct_loss import density_ratio, divergence_weights, generator_loss, generator_terms
from sidbench.testing.gaussian_1d import denoiser, hermite_nodes, log_ratio

NAMES = list(DIVERGENCES)


def test_density_ratio_from_the_logit_map() -> None:
    logits = torch.zeros(3, 1, 2, 2)
    logits[0] = torch.tensor([[0.0, 2.0], [1.0, 1.0]])  # mean 1
    logits[1] = 30.0  # clamped at 10, as SiDA's generator term clamps
    logits[2] = -math.log(4.0)
    logits.requires_grad_(True)
    r = density_ratio(logits)
    assert r.shape == (3, 1, 1, 1) and not r.requires_grad
    torch.testing.assert_close(r.flatten(), torch.tensor([math.e, math.exp(10.0), 0.25]))


def test_weights_by_hand() -> None:
    r = torch.tensor([0.5, 1.0, 2.0])
    w = divergence_weights(r, "forward_kl")  # h = r: no Fisher-type term, DMD-type factor r
    torch.testing.assert_close(w.sid, r)
    torch.testing.assert_close(w.fisher, torch.zeros(3))
    torch.testing.assert_close(w.ratio_first, r)
    torch.testing.assert_close(w.ratio_second, torch.zeros(3))
    w = divergence_weights(r, "reverse_kl")
    assert w.sid.tolist() == [1, 1, 1] and w.fisher.tolist() == [0.5] * 3
    assert w.ratio_first.tolist() == [0, 0, 0] and w.ratio_second.tolist() == [0, 0, 0]
    w = divergence_weights(torch.tensor([1.0]), "jensen_shannon")  # h = 1/2, h' = 1/4, h'' = -1/4
    assert (w.sid.item(), w.fisher.item(), w.ratio_first.item(), w.ratio_second.item()) == (0.5, 0.125, 0.25, 0.125)
    w = divergence_weights(torch.tensor([2.0]), "chi_square")  # h = 8, h' = 8, h'' = 4
    assert (w.sid.item(), w.fisher.item(), w.ratio_first.item(), w.ratio_second.item()) == (8.0, -4.0, 16.0, -8.0)
    w = divergence_weights(torch.tensor([3.0]), "jeffreys")  # h = 4, h' = 1
    assert (w.sid.item(), w.fisher.item(), w.ratio_first.item(), w.ratio_second.item()) == (4.0, 0.5, 3.0, 0.0)


def pieces(seed: int = 0, n: int = 3) -> tuple[torch.Tensor, ...]:
    """x_g (a leaf) and y_real, y_fake depending on it through a fixed smooth map, sigma, ratio."""
    gen = torch.Generator().manual_seed(seed)
    x_g = torch.randn(n, 2, 3, 3, generator=gen).requires_grad_(True)
    a, b = torch.randn(2, 3, 3, generator=gen), torch.randn(2, 3, 3, generator=gen)
    y_real = torch.tanh(0.8 * x_g + 0.3 * a)
    y_fake = torch.tanh(0.7 * x_g + 0.3 * b)
    sigma = torch.tensor([0.3, 1.0, 4.0][:n]).reshape(-1, 1, 1, 1)
    ratio = torch.tensor([0.5, 1.7, 3.0][:n]).reshape(-1, 1, 1, 1)
    return x_g, y_real, y_fake, sigma, ratio


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss.sum(), x, retain_graph=True)
    return g


def test_reverse_kl_is_sid_with_alpha_half() -> None:
    x_g, y_real, y_fake, sigma, ratio = pieces()
    ui = generator_loss(x_g, y_real, y_fake, ratio, sigma, "reverse_kl")
    sid = sid_generator_loss(x_g, y_real, y_fake, 0.5)
    torch.testing.assert_close(ui, sid)
    torch.testing.assert_close(grad_of(ui, x_g), grad_of(sid, x_g))


def test_forward_kl_is_r_times_sid_alpha_one_plus_a_dmd_type_term() -> None:
    x_g, y_real, y_fake, sigma, ratio = pieces(1)
    terms = generator_terms(x_g, y_real, y_fake, ratio, sigma, "forward_kl")
    torch.testing.assert_close(terms.sid, ratio * sid_generator_loss(x_g, y_real, y_fake, 1.0))
    assert torch.equal(terms.fisher, torch.zeros_like(terms.fisher))
    without = generator_loss(x_g, y_real, y_fake, ratio, sigma, "forward_kl", ratio_gradient=False)
    torch.testing.assert_close(without, terms.sid)
    # the DMD-type term: value 0, gradient c * Delta / wf with c = r * sum(Delta * (y_fake - x_g)) / sigma^2
    assert torch.equal(terms.dmd, torch.zeros_like(terms.dmd))
    delta = (y_real - y_fake).detach()
    s = (delta * (y_fake - x_g).detach()).sum(dim=(1, 2, 3), keepdim=True)
    expected = ratio * s / sigma**2 * delta / normaliser(x_g, y_real)
    torch.testing.assert_close(grad_of(terms.dmd, x_g), expected)


def test_dmd_type_term_by_hand() -> None:
    """One sample, two pixels, y's constant: forward KL at r = 2, sigma = 0.5, wf = 1:
    Delta = (0.1, -0.2), y_fake - x_g = (0.3, 0.1), S = 0.01, c = 2 * 0.01 / 0.25 = 0.08."""
    x_g = torch.tensor([0.2, 0.0]).reshape(1, 1, 1, 2).requires_grad_(True)
    y_fake = torch.tensor([0.5, 0.1]).reshape(1, 1, 1, 2)
    y_real = y_fake + torch.tensor([0.1, -0.2]).reshape(1, 1, 1, 2)
    one = torch.ones(1, 1, 1, 1)
    terms = generator_terms(x_g, y_real, y_fake, 2 * one, 0.5 * one, "forward_kl", wf=one)
    torch.testing.assert_close(grad_of(terms.dmd, x_g).flatten(), torch.tensor([0.008, -0.016]))
    # chi-square at r = 2: c = (16 * S - 8 * |Delta|^2) / sigma^2 = (0.16 - 0.4) / 0.25 = -0.96
    terms = generator_terms(x_g, y_real, y_fake, 2 * one, 0.5 * one, "chi_square", wf=one)
    torch.testing.assert_close(grad_of(terms.dmd, x_g).flatten(), torch.tensor([-0.096, 0.192]))


def test_a_non_finite_sample_leaves_the_others_alone() -> None:
    x_g, y_real, y_fake, sigma, ratio = pieces(2)
    y_fake = y_fake.clone()
    y_fake[1, 0, 0, 0] = float("nan")
    loss = generator_loss(x_g, y_real, y_fake, ratio, sigma, "jensen_shannon")
    assert torch.isfinite(loss[[0, 2]]).all() and not torch.isfinite(loss[1]).all()
    # the per-sample sums of the DMD-type term do not mix samples (sample 1's own gradient is NaN,
    # as SiD's is for a NaN inside the graph: sidbench.methods.nonfinite)
    g = grad_of(loss[[0, 2]], x_g)
    assert torch.isfinite(g[[0, 2]]).all()


# -- the Gaussian analytic bed ------------------------------------------------------------------------

MU, S2 = 0.3, 0.25  # data N(0.3, 0.5^2); generator N(m, a^2) from (m, a) = (-0.2, 0.8)


def expanded_divergence_gradient(name: str, sigma: float, z: torch.Tensor, n: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d/d(m, a) of E_{q_t}[0.5 h(r) (D_real - D_fake)^2], every dependence on (m, a) live (the
    samples, the generator's denoiser D_fake and its density in r)."""
    m, a = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (-0.2, 0.8))
    x_t = m + a * z + sigma * n
    delta = denoiser(x_t, MU, S2, sigma) - denoiser(x_t, m, a**2, sigma)
    r = log_ratio(x_t, MU, S2, m, a**2, sigma).exp()
    objective = (w * 0.5 * divergence(name).h(r) * delta**2).sum()
    return torch.stack(torch.autograd.grad(objective, (m, a)))


def surrogate_gradient(name: str, sigma: float, z: torch.Tensor, n: torch.Tensor, w: torch.Tensor,
                       drop: str | None = None) -> torch.Tensor:
    """d/d(m, a) of the expectation of Uni-Instruct's loss: frozen denoisers (the fake one the
    generator's exact denoiser) differentiated through their input, the exact ratio as a constant;
    wf = 1 (the time weighting is not what is tested). `drop` leaves one term out."""
    m, a = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (-0.2, 0.8))
    shape = (-1, 1, 1, 1)
    x_g = (m + a * z).reshape(shape)
    x_t = x_g + sigma * n.reshape(shape)
    y_real = denoiser(x_t, MU, S2, sigma)
    y_fake = denoiser(x_t, m.detach(), a.detach() ** 2, sigma)
    ratio = log_ratio(x_t, MU, S2, m.detach(), a.detach() ** 2, sigma).exp().detach()
    sig, one = torch.full_like(ratio, sigma), torch.ones_like(ratio)
    terms = generator_terms(x_g, y_real, y_fake, ratio, sig, name, wf=one)._asdict()
    loss = sum(v for k, v in terms.items() if k != drop)
    return torch.stack(torch.autograd.grad((w.reshape(shape) * loss).sum(), (m, a)))


@pytest.mark.parametrize("sigma", [0.7, 2.0])
@pytest.mark.parametrize("name", NAMES)
def test_loss_gradient_is_the_gradient_of_the_expanded_divergence(name: str, sigma: float) -> None:
    z, n, w = hermite_nodes(40)
    exact = expanded_divergence_gradient(name, sigma, z, n, w)
    assert exact.abs().min() > 1e-3
    torch.testing.assert_close(surrogate_gradient(name, sigma, z, n, w), exact, rtol=1e-9, atol=1e-12)
    weights = divergence_weights(torch.tensor([0.5, 2.0], dtype=torch.float64), name)
    for term, present in (("dmd", bool((weights.ratio_first != 0).any() or (weights.ratio_second != 0).any())),
                          ("fisher", bool((weights.fisher != 0).any()))):
        if present:  # a term the divergence has cannot be dropped
            assert not torch.allclose(surrogate_gradient(name, sigma, z, n, w, drop=term), exact, rtol=0.01), term


def test_sid_alpha_one_alone_is_not_the_forward_kl_gradient() -> None:
    """What the authors' code's forward-KL branch keeps (r times SiD's alpha = 1 loss, the ratio a
    constant) misses the DMD-type term: on the Gaussian its gradient w.r.t. the scale a is 2.6
    times the exact one."""
    z, n, w = hermite_nodes(40)
    exact = expanded_divergence_gradient("forward_kl", 0.7, z, n, w)
    code_like = surrogate_gradient("forward_kl", 0.7, z, n, w, drop="dmd")
    assert abs(code_like[1] / exact[1] - 1) > 0.5


def test_loss_vanishes_at_the_target() -> None:
    """q = p: D_fake = D_real as functions and r = 1, so every term and its gradient are 0."""
    z, n, _ = hermite_nodes(10)
    x_g = (MU + math.sqrt(S2) * z).reshape(-1, 1, 1, 1).requires_grad_(True)
    x_t = x_g + 0.7 * n.reshape(-1, 1, 1, 1)
    y = denoiser(x_t, MU, S2, 0.7)
    ratio = density_ratio(torch.zeros(len(z), 1, 4, 4)).double()
    for name in NAMES:
        loss = generator_loss(x_g, y, y.clone(), ratio, torch.full_like(ratio, 0.7), name)
        assert torch.equal(grad_of(loss, x_g), torch.zeros_like(x_g)), name
