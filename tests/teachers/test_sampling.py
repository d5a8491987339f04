"""Karras grid and the deterministic Heun sampler (EDM Algorithm 1)."""

from __future__ import annotations

import math

import pytest
import torch

from sidbench.teachers import build_edm_network
from sidbench.teachers.sampling import heun_integrate, heun_sample, heun_step, karras_sigmas


def test_karras_grid_formula() -> None:
    n = 18
    s = karras_sigmas(n)
    assert s.dtype == torch.float64 and s.shape == (n + 1,)
    assert s[0].item() == pytest.approx(80.0, rel=1e-12)
    assert s[n - 1].item() == pytest.approx(0.002, rel=1e-12)
    assert s[n].item() == 0.0
    assert (s[1:] < s[:-1]).all()
    i = 7  # one interior point by hand
    hand = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[i].item() == pytest.approx(hand, rel=1e-12)
    # Other arguments, and the one-step grid.
    s = karras_sigmas(40, sigma_min=0.01, sigma_max=10, rho=3)
    assert (s[0].item(), s[39].item(), s[40].item()) == (pytest.approx(10), pytest.approx(0.01), 0.0)
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError):
        karras_sigmas(0)


class CountingDenoiser:
    """The analytic denoiser of a per-dimension Gaussian N(mu, v): D(x, s) = mu + v/(v+s^2) (x - mu)."""

    def __init__(self, mu: torch.Tensor, var: torch.Tensor) -> None:
        self.mu, self.var, self.calls = mu.double(), var.double(), 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels=None) -> torch.Tensor:
        self.calls += 1
        assert x.dtype == torch.float64 and sigma.shape == (x.shape[0],)
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return self.mu + self.var / (self.var + s2) * (x - self.mu)


@pytest.mark.parametrize("num_steps", [1, 2, 18, 40])
def test_nfe_is_2n_minus_1(num_steps: int) -> None:
    net = CountingDenoiser(torch.zeros(3), torch.ones(3))
    heun_sample(net, torch.randn(4, 3), num_steps=num_steps)
    assert net.calls == 2 * num_steps - 1


def test_gaussian_target_is_recovered() -> None:
    mu = torch.tensor([-0.5, 0.0, 0.3, 0.8], dtype=torch.float64)
    var = torch.tensor([0.05, 0.25, 1.0, 0.5], dtype=torch.float64)
    z = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # The probability-flow ODE of a Gaussian keeps (x - mu)/sqrt(var + s^2) fixed: the exact map.
    exact = mu + (80 * z - mu) * torch.sqrt(var / (var + 80 ** 2))

    def rel_error(num_steps: int, n: int = 1000) -> float:
        x = heun_sample(CountingDenoiser(mu, var), z[:n], num_steps=num_steps)
        return ((x - exact[:n]) / (exact[:n] - mu)).abs().max().item()

    # 40 steps (the 64x64 setting): moments on target up to discretisation and Monte Carlo error
    # (measured: variance +3% at most, of which about 1% is Monte Carlo).
    x = heun_sample(CountingDenoiser(mu, var), z, num_steps=40)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x.mean(0), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(x.var(0), var, rtol=0.05, atol=0)
    # Heun is second order: doubling the steps cuts the error about fourfold.
    e18, e40, e80 = rel_error(18), rel_error(40), rel_error(80)
    assert e40 < 0.02 and e18 / e40 > 3.5 and e40 / e80 > 3.5, (e18, e40, e80)


def test_precomputed_grid_and_core_function_agree() -> None:
    net = CountingDenoiser(torch.full([2], 0.2), torch.full([2], 0.3))
    z = torch.randn(8, 2, dtype=torch.float32)
    sigmas = karras_sigmas(10, rho=5)
    a = heun_sample(net, z, num_steps=10, rho=5)
    b = heun_sample(net, z, sigmas=sigmas)
    c = heun_integrate(net, z.double() * sigmas[0], sigmas)
    assert a.dtype == torch.float32  # returned in z's dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c.float(), rtol=0, atol=0)
    # heun_step is the building block: the last step to sigma = 0 is a pure Euler step.
    x = torch.randn(8, 2, dtype=torch.float64)
    s = torch.tensor(0.5, dtype=torch.float64)
    d = (x - net(x, s.expand(8))) / s
    torch.testing.assert_close(heun_step(net, x, s, torch.tensor(0.0, dtype=torch.float64)), x - s * d)


def test_heun_sample_with_an_edm_network() -> None:
    torch.manual_seed(0)
    net = build_edm_network(dict(precond="EDMPrecond", model_type="SongUNet", img_resolution=8, img_channels=1,
                                 label_dim=3, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                                 attn_resolutions=[4], dropout=0.0)).eval()
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    x = heun_sample(net, torch.randn(2, 1, 8, 8), labels, num_steps=3)
    assert x.shape == (2, 1, 8, 8) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert not math.isnan(x.std().item())
