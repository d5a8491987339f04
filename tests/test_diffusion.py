"""sidbench.diffusion: the Karras schedule and its grids, the loss weights, the ODE steps, the
samplers and their registry (docs/edm.md), against values worked out by hand."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from sidbench.diffusion import (
    RecipeError, adjacent_points, edm_training_sigma, edm_weight, edm_weight_snr, euler_step, heun_sample,
    heun_step, karras_ascending, karras_points, karras_sigma, karras_sigmas, nested_sigmas, sample, sample_euler,
    sample_heun, sample_one_step, sigma_data_of, truncated_snr_weight,
)
from sidbench.samplers import SAMPLERS, read_recipe, register_sampler
from sidbench.teachers import build_edm_network

A, B = 80.0 ** (1 / 7), 0.002 ** (1 / 7)  # Karras: sigma(f) = (A + f (B - A))^7
TINY = dict(precond="EDMPrecond", model_type="SongUNet", img_resolution=8, img_channels=1, label_dim=3,
            model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


# -- the schedule and its grids -------------------------------------------------------------------
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


def test_every_grid_is_the_one_schedule() -> None:
    f = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(karras_sigma(f), torch.tensor([80.0, (A + 0.25 * (B - A)) ** 7, 0.002], dtype=torch.float64))
    # EDM's grid at i/(N-1); its points without the 0; the same small to large (DMD2's indexing)
    torch.testing.assert_close(karras_sigmas(5)[:-1], karras_sigma(torch.arange(5, dtype=torch.float64) / 4), rtol=0, atol=0)
    assert torch.equal(karras_points(5), karras_sigmas(5)[:-1])
    assert torch.equal(karras_ascending(5), karras_points(5).flip(0)) and karras_ascending(1000).shape == (1000,)
    assert karras_ascending(1000)[0].item() == pytest.approx(0.002) and karras_ascending(1000)[-1].item() == pytest.approx(80.0)
    # the progressive student's grid at i/N, ending at 0 (or at sigma_min), nested under halving
    assert nested_sigmas(2).tolist() == [80.0, pytest.approx(((A + B) / 2) ** 7, rel=1e-12), 0.0]
    assert nested_sigmas(2, final_zero=False)[-1].item() == pytest.approx(0.002, rel=1e-12)
    assert torch.equal(nested_sigmas(8)[::2], nested_sigmas(4))
    # consistency training's pairs: adjacent points of `karras_points`, large then small
    t, t2 = adjacent_points(3, 18, index=torch.tensor([0, 5, 16]), dtype=torch.float64)
    torch.testing.assert_close(t.flatten(), karras_points(18)[[0, 5, 16]], rtol=0, atol=0)
    torch.testing.assert_close(t2.flatten(), karras_points(18)[[1, 6, 17]], rtol=0, atol=0)
    with pytest.raises(ValueError):
        adjacent_points(1, 1)


def test_edm_training_sigma_is_log_normal() -> None:
    torch.manual_seed(0)
    s = edm_training_sigma(40000, p_mean=-1.2, p_std=1.2)
    assert s.shape == (40000, 1, 1, 1) and bool((s > 0).all())
    assert abs(float(s.log().mean()) + 1.2) < 0.02 and abs(float(s.log().std()) - 1.2) < 0.02
    torch.manual_seed(0)  # one draw of randn, nothing else: the same stream as EDM's loss
    torch.testing.assert_close(s, (torch.randn(40000, 1, 1, 1) * 1.2 - 1.2).exp(), rtol=0, atol=0)


# -- loss weights and sigma_data ------------------------------------------------------------------
def test_loss_weights_by_hand() -> None:
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(edm_weight(sigma), torch.tensor([0.5 / 0.0625, 4.25 / 1.0], dtype=torch.float64))
    torch.testing.assert_close(edm_weight(sigma, 1.0), torch.tensor([1.25 / 0.25, 5.0 / 4.0], dtype=torch.float64))
    # DMD2's form of the same weight, 1/sigma^2 + 1/sd^2
    torch.testing.assert_close(edm_weight_snr(sigma), edm_weight(sigma))
    torch.testing.assert_close(edm_weight_snr(sigma, 1.0), edm_weight(sigma, 1.0))
    # progressive distillation's truncated SNR, max(1/sigma^2, 1)
    torch.testing.assert_close(truncated_snr_weight(torch.tensor([0.1, 0.5, 1.0, 3.0])), torch.tensor([100.0, 4.0, 1.0, 1.0]))


def test_sigma_data_is_the_networks() -> None:
    net = build_edm_network({**TINY, "sigma_data": 1.0})
    assert sigma_data_of(net) == 1.0 and sigma_data_of(build_edm_network(TINY)) == 0.5

    class Wrapper(torch.nn.Module):  # as DDP holds the network
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    assert sigma_data_of(Wrapper(net)) == 1.0
    vp = build_edm_network({**TINY, "precond": "VPPrecond"})
    assert sigma_data_of(vp) == 0.5 and sigma_data_of(vp, default=2.0) == 2.0  # no sigma_data of its own


# -- ODE steps ------------------------------------------------------------------------------------
class CountingDenoiser:
    """The analytic denoiser of a per-dimension Gaussian N(mu, v): D(x, s) = mu + v/(v+s^2) (x - mu)."""

    def __init__(self, mu: torch.Tensor, var: torch.Tensor) -> None:
        self.mu, self.var, self.calls = mu.double(), var.double(), 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels=None) -> torch.Tensor:
        self.calls += 1
        assert x.dtype == torch.float64 and sigma.shape == (x.shape[0],)
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return self.mu + self.var / (self.var + s2) * (x - self.mu)


def test_heun_step_by_hand_shared_and_per_sample() -> None:
    net = CountingDenoiser(torch.full([2], 0.2), torch.full([2], 0.3))
    x = torch.randn(4, 2, dtype=torch.float64)
    s, s2 = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    d = (x - net(x, s.expand(4))) / s
    x_e = x + (s2 - s) * d
    d2 = (x_e - net(x_e, s2.expand(4))) / s2
    net.calls = 0
    got = heun_step(net, x, s, s2)
    assert net.calls == 2
    torch.testing.assert_close(got, x + (s2 - s) * (d + d2) / 2, rtol=0, atol=1e-15)
    # per-sample sigmas: the same step where they are equal, Euler only where a sample lands on 0
    per = heun_step(net, x, s.repeat(4), torch.tensor([0.4, 0.4, 0.0, 0.4], dtype=torch.float64))
    assert torch.equal(per[[0, 1, 3]], got[[0, 1, 3]])
    torch.testing.assert_close(per[2], (x + (0 - s) * d)[2])
    # a shared step to 0 is Euler and costs one call (EDM's last step); per sample it costs two
    net.calls = 0
    torch.testing.assert_close(heun_step(net, x, s, torch.tensor(0.0, dtype=torch.float64)), x - s * d)
    assert net.calls == 1
    # Euler (DDIM) lands on D itself at 0, exactly
    assert torch.equal(euler_step(net, x, s, 0.0), net(x, s.expand(4)))
    torch.testing.assert_close(euler_step(net, x, s, s2), x_e)


# -- samplers -------------------------------------------------------------------------------------
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


def test_samplers_on_a_grid_and_through_a_recipe_agree() -> None:
    net = CountingDenoiser(torch.full([2], 0.2), torch.full([2], 0.3))
    z = torch.randn(8, 2, dtype=torch.float32)
    sigmas = karras_sigmas(10, rho=5)
    a = heun_sample(net, z, num_steps=10, rho=5)
    assert a.dtype == torch.float32  # returned in z's dtype
    torch.testing.assert_close(sample_heun(net, z, None, sigmas), a, rtol=0, atol=0)
    recipe = {"sampler": "heun", "sigmas": sigmas.tolist(), "nfe": 19}
    torch.testing.assert_close(sample(net, z, None, recipe), a, rtol=0, atol=0)
    # Euler on a grid, by hand: x = 80 z, then x + (s' - s)(x - D(x, s))/s, and D itself at 0
    grid = nested_sigmas(2)
    x = 80 * z.double()
    x = x + (grid[1] - 80) * (x - net(x, torch.full((8,), 80.0, dtype=torch.float64))) / 80
    x = net(x, grid[1].expand(8))
    torch.testing.assert_close(sample_euler(net, z, None, grid), x.float(), rtol=0, atol=0)
    torch.testing.assert_close(sample(net, z, None, {"sampler": "euler", "sigmas": grid.tolist(), "nfe": 2}), x.float())


def test_one_step_keeps_the_graph_and_reads_old_recipes() -> None:
    torch.manual_seed(0)
    net = build_edm_network(TINY)
    z = torch.randn(2, 1, 8, 8)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    x = sample(net, z, labels, {"sampler": "one_step", "sigmas": [2.5], "nfe": 1})
    assert x.requires_grad  # a one-step generator trains through its sampler
    torch.testing.assert_close(x, net(2.5 * z, torch.full((2,), 2.5), labels), rtol=0, atol=0)
    assert torch.equal(sample(net, z, labels, {"sampler": "one_step", "sigma": 2.5, "nfe": 1}), x)  # the older form
    assert torch.equal(sample(net, z, labels, {"sigma_init": 2.5}), x)  # the oldest
    with pytest.raises(RecipeError, match="one sigma"):
        sample_one_step(net, z, labels, torch.tensor([80.0, 2.0]))


def test_heun_sample_with_an_edm_network() -> None:
    torch.manual_seed(0)
    net = build_edm_network(TINY).eval()
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    x = heun_sample(net, torch.randn(2, 1, 8, 8), labels, num_steps=3)
    assert x.shape == (2, 1, 8, 8) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert not math.isnan(x.std().item())


# -- the registry and recipes ---------------------------------------------------------------------
def test_builtin_samplers_match_their_declarations_and_share_one_signature() -> None:
    declared = SAMPLERS.describe()
    assert set(declared) >= {"one_step", "heun", "euler", "consistency"}
    for name in ("one_step", "heun", "euler", "consistency"):
        fn = SAMPLERS.get(name)  # the decorator checked its target and its docstring's line
        assert (inspect.getdoc(fn) or "").splitlines()[0] == declared[name]
        assert list(inspect.signature(fn).parameters)[:4] == ["net", "noise", "labels", "sigmas"]


def test_read_recipe_forms() -> None:
    assert read_recipe({"sampler": "one_step", "sigma": 2.5, "nfe": 1}) == {"sampler": "one_step", "sigmas": [2.5], "nfe": 1}
    assert read_recipe({"sigma_init": 80}) == {"sampler": "one_step", "sigmas": [80.0], "nfe": 1}
    today = {"sampler": "consistency", "sigmas": [80.0, 0.8], "sigma_min": 0.002, "nfe": 2}
    assert read_recipe(today) == today
    with pytest.raises(RecipeError, match="names no sampler"):
        read_recipe({"sigmas": [1.0]})


def test_bad_recipes_are_one_line() -> None:
    net = CountingDenoiser(torch.zeros(2), torch.ones(2))
    z = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(RecipeError, match="does not fit the 'consistency' sampler"):
        sample(net, z, None, {"sampler": "consistency", "sigmas": [80.0], "nfe": 1})  # no sigma_min
    with pytest.raises(RecipeError, match="does not fit the 'heun' sampler"):
        sample(net, z, None, {"sampler": "heun", "sigmas": [80.0, 0.0], "churn": 0.1, "nfe": 1})
    from sidbench.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown sampler 'ddim'; known samplers: .*heun"):
        sample(net, z, None, {"sampler": "ddim", "sigmas": [80.0], "nfe": 1})


def test_a_sampler_is_one_decorator() -> None:
    @register_sampler("test_halves")
    def halves(net, noise, labels, sigmas, *, scale: float = 0.5):  # noqa: ANN001, ANN202
        """Test: the network at sigmas[0], scaled."""
        return scale * net(noise * sigmas[0], sigmas[0].expand(noise.shape[0]), labels)

    assert SAMPLERS.describe()["test_halves"] == "Test: the network at sigmas[0], scaled."
    net = CountingDenoiser(torch.zeros(2), torch.ones(2))
    z = torch.randn(3, 2, dtype=torch.float64)
    got = sample(net, z, None, {"sampler": "test_halves", "sigmas": [2.0], "scale": 0.25, "nfe": 1})
    torch.testing.assert_close(got, 0.25 * net(2 * z, torch.full((3,), 2.0, dtype=torch.float64)))
