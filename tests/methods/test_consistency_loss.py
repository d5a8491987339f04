"""Consistency distillation's parameterisation, grid, teacher step, EMA and sampler
(docs/baselines.md#consistency-distillation), against values worked out by hand; the Gaussian test
bed is data N(0, C^2) per pixel (D(x, s) = x C^2/(C^2 + s^2), ODE flow
x(s) = x(t) sqrt(s^2 + C^2)/sqrt(t^2 + C^2))."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from sidbench.diffusion import RecipeError, adjacent_points, heun_step, karras_points, per_sample_noise, sample_consistency
from sidbench.methods.baselines.consistency.loss import build_consistency_network, consistency_constructor, ema_update_
from sidbench.teachers.networks import ConsistencyParam, build_edm_network, consistency_coefficients
from sidbench.testing.gaussian import GaussianDenoiser
from sidbench.testing.tiny import TINY_CONSTRUCTOR

C = 0.5
SD = 0.5
A, B = 80.0 ** (1 / 7), 0.002 ** (1 / 7)


def tiny_net(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_edm_network({**TINY_CONSTRUCTOR, **overrides}).eval()


def gaussian_teacher() -> GaussianDenoiser:
    return GaussianDenoiser(torch.zeros(4), C * torch.eye(4), (1, 2, 2)).double().requires_grad_(False)


def col(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1, 1, 1)


# -- coefficients and the parameterisation ---------------------------------------------------------
def test_coefficients_boundary_condition_and_hand_values() -> None:
    for dtype in (torch.float32, torch.float64):
        c_skip, c_out = consistency_coefficients(torch.tensor([0.002], dtype=dtype))
        assert c_skip.item() == 1.0 and c_out.item() == 0.0  # exactly: f(x, s_min) = x
    c_skip, c_out = consistency_coefficients(torch.tensor(1.0, dtype=torch.float64))
    assert math.isclose(float(c_skip), 0.25 / (0.998**2 + 0.25), rel_tol=1e-12)
    assert math.isclose(float(c_out), 0.998 * 0.5 / math.sqrt(1.25), rel_tol=1e-12)
    # far from s_min: c_skip -> 0, c_out -> sigma_data
    c_skip, c_out = consistency_coefficients(torch.tensor(1e4, dtype=torch.float64))
    assert float(c_skip) < 1e-8 and math.isclose(float(c_out), SD, rel_tol=1e-6)


def test_coefficients_without_offset_are_edms() -> None:
    s = torch.tensor([0.01, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)
    c_skip, c_out = consistency_coefficients(s, sigma_min=0.0)
    edm_skip, edm_out, _, _ = tiny_net().coefficients(s)
    torch.testing.assert_close(c_skip, edm_skip)
    torch.testing.assert_close(c_out, edm_out)
    # EDM's unit-variance design: c_skip + (c_out/sd)^2 = 1; the s_min offset breaks it by O(s_min)
    torch.testing.assert_close(c_skip + (c_out / SD) ** 2, torch.ones_like(s))
    c_skip, c_out = consistency_coefficients(s)
    assert float((c_skip + (c_out / SD) ** 2 - 1).abs().max()) < 0.02


@pytest.mark.parametrize("label_dim", [0, 10])
def test_param_reuses_the_teacher_network(label_dim: int) -> None:
    teacher = tiny_net(label_dim=label_dim)
    student = ConsistencyParam(build_edm_network({**TINY_CONSTRUCTOR, "label_dim": label_dim}))
    assert list(student.state_dict()) == list(teacher.state_dict())
    student.load_state_dict(teacher.state_dict(), strict=True)

    torch.manual_seed(1)
    x = torch.randn(4, 1, 8, 8)
    labels = torch.nn.functional.one_hot(torch.arange(4) % 10, 10).float() if label_dim else None
    with torch.no_grad():
        at_boundary = student(x, 0.002, labels)
        assert torch.equal(at_boundary, x)
        # the raw F recovered from the teacher's D = c_skip^E x + c_out^E F at s = 1.3, put into
        # the consistency coefficients
        s = 1.3
        d = teacher(x, s, labels).double()
        raw = (d - 0.25 / (s**2 + 0.25) * x.double()) / (s * 0.5 / math.sqrt(s**2 + 0.25))
        expected = 0.25 / ((s - 0.002) ** 2 + 0.25) * x.double() + (s - 0.002) * 0.5 / math.sqrt(s**2 + 0.25) * raw
        torch.testing.assert_close(student(x, torch.full((4,), s), labels).double(), expected, rtol=1e-4, atol=1e-5)


def test_param_deepcopy_is_independent_and_trains() -> None:
    net = ConsistencyParam(tiny_net())
    ema = copy.deepcopy(net)  # as the trainer's EMA and the target network are made
    assert ema._edm.model is ema.model and ema.model is not net.model
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        before = ema(x, 3.0)
        for p in net.parameters():
            p.add_(0.1)
        assert torch.equal(ema(x, 3.0), before)
        assert not torch.equal(net(x, 3.0), before)
    out = net(x, torch.tensor([3.0, 0.5]))
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_saved_consistency_function_rebuilds(tmp_path: Path) -> None:
    from sidbench.teachers.load import TeacherLoadError, load_native_teacher, load_teacher_file, save_native_teacher

    net = ConsistencyParam(tiny_net())
    path = save_native_teacher(net, consistency_constructor(TINY_CONSTRUCTOR), tmp_path / "g.safetensors")
    constructor, state, _ = load_native_teacher(path)
    assert constructor["param"] == "consistency"
    rebuilt = build_consistency_network(constructor)
    rebuilt.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, 5.0), net(x, 5.0))
    # a loader that does not know the key refuses the file instead of building a plain denoiser
    with pytest.raises(TeacherLoadError, match="param"):
        load_teacher_file(path)


def test_param_refuses_vp_networks() -> None:
    vp = build_edm_network({**TINY_CONSTRUCTOR, "precond": "VPPrecond"})
    with pytest.raises(ValueError, match="EDMPrecond"):
        ConsistencyParam(vp)


# -- grid and teacher step -------------------------------------------------------------------------
def test_grid_end_points_by_hand() -> None:
    grid = karras_points(18)
    assert grid.shape == (18,)
    t, t2 = adjacent_points(2, 18, index=torch.tensor([0, 16]), dtype=torch.float64)
    torch.testing.assert_close(t.flatten(), torch.tensor([80.0, (A + 16 / 17 * (B - A)) ** 7], dtype=torch.float64))
    torch.testing.assert_close(t2.flatten(), torch.tensor([(A + 1 / 17 * (B - A)) ** 7, 0.002], dtype=torch.float64))
    with pytest.raises(ValueError):
        adjacent_points(1, 18, index=torch.tensor([17]))


def test_adjacent_points_are_uniform_and_adjacent() -> None:
    gen = torch.Generator().manual_seed(0)
    t, t2 = adjacent_points(39000, 40, generator=gen, dtype=torch.float64)
    grid = karras_points(40)
    k = torch.searchsorted(-grid, -t.flatten())  # grid is decreasing
    torch.testing.assert_close(grid[k], t.flatten(), rtol=0, atol=0)
    torch.testing.assert_close(grid[k + 1], t2.flatten(), rtol=0, atol=0)
    counts = torch.bincount(k, minlength=40)
    assert counts[39] == 0 and int(counts[:39].min()) > 800 and int(counts[:39].max()) < 1200  # 1000 each


def test_heun_step_with_exact_denoisers() -> None:
    torch.manual_seed(2)
    index = torch.tensor([0, 5, 10, 16])
    t, t2 = adjacent_points(4, 18, index=index, dtype=torch.float64)
    x_t = torch.randn(4, 1, 2, 2, dtype=torch.float64) * (t**2 + C**2).sqrt()
    # a point mass: dx/ds = x/s, and Heun is exact: x(t2) = x(t) t2/t
    zero = heun_step(lambda x, s, y: torch.zeros_like(x), x_t, t, t2)
    torch.testing.assert_close(zero, x_t * t2 / t)
    # N(0, C^2), by hand: d = x t/(C^2 + t^2), x_e = x + (t2 - t) d, d2 = x_e t2/(C^2 + t2^2)
    got = heun_step(gaussian_teacher(), x_t, t, t2)
    d = t / (C**2 + t**2)
    d2 = (1 + (t2 - t) * d) * t2 / (C**2 + t2**2)
    torch.testing.assert_close(got, x_t * (1 + (t2 - t) * (d + d2) / 2))
    # within 3% of the exact flow on the coarse CIFAR-10 grid (steps of ~half a sigma near C) ...
    exact = x_t * ((t2**2 + C**2) / (t**2 + C**2)).sqrt()
    torch.testing.assert_close(got, exact, rtol=0.03, atol=0)
    # ... and second order: on a fine grid far closer than an Euler step
    t, t2 = adjacent_points(4, 1000, index=torch.tensor([0, 300, 600, 900]), dtype=torch.float64)
    x_t = torch.ones(4, 1, 2, 2, dtype=torch.float64)
    exact = ((t2**2 + C**2) / (t**2 + C**2)).sqrt()
    heun_err = (heun_step(gaussian_teacher(), x_t, t, t2) - exact).abs()
    euler_err = (x_t * (1 + (t2 - t) * t / (C**2 + t**2)) - exact).abs()
    assert float((heun_err / exact).max()) < 1e-6
    assert bool((heun_err < 0.01 * euler_err).all())


def test_heun_step_to_zero_is_an_euler_step() -> None:
    x_t = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    got = heun_step(gaussian_teacher(), x_t, col([0.8, 0.8]), col([0.0, 0.4]))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[0], x_t[0] * C**2 / (C**2 + 0.64))  # the Euler step to 0 is D


# -- EMA and sampling ------------------------------------------------------------------------------
def test_ema_update_by_hand() -> None:
    target, online = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.fill_(1.0), target.bias.fill_(-1.0)
        online.weight.fill_(3.0), online.bias.fill_(1.0)
    ema_update_(target, online, 0.75)  # 0.75 * 1 + 0.25 * 3 = 1.5; 0.75 * -1 + 0.25 * 1 = -0.5
    torch.testing.assert_close(target.weight, torch.full((1, 2), 1.5))
    torch.testing.assert_close(target.bias, torch.tensor([-0.5]))
    assert target.weight.grad_fn is None and target.weight.is_leaf
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[0.1234567, -7.654321]]))
    ema_update_(target, online, 0.0)
    assert torch.equal(target.weight, online.weight) and torch.equal(target.bias, online.bias)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            ema_update_(target, online, bad)


def exact_consistency(x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The exact consistency function of N(0, C^2): the ODE flow from s down to s_min."""
    s = s.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return x * math.sqrt(C**2 + 0.002**2) / (s**2 + C**2).sqrt()


def test_exact_consistency_function_meets_the_boundary() -> None:
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(exact_consistency(x, torch.full((3,), 0.002)), x)


def consistency(z: torch.Tensor, sigmas: list[float], f=exact_consistency) -> torch.Tensor:  # noqa: ANN001
    return sample_consistency(f, z, None, torch.tensor(sigmas, dtype=torch.float64), sigma_min=0.002)


def test_multistep_sampling_gives_the_target_variance() -> None:
    z = torch.randn(20000, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    target = C**2 + 0.002**2  # the law of the data at noise level s_min
    # one step: Var = 80^2 (C^2 + s_min^2)/(80^2 + C^2)
    one = consistency(z, [80.0])
    one_var = 6400 * target / (6400 + C**2)
    assert math.isclose(float(one.var()), one_var, rel_tol=0.02)
    # more steps: each adds variance s^2 - s_min^2 to a sample at level s_min, then maps back:
    # v <- (v + s^2 - s_min^2) (C^2 + s_min^2)/(C^2 + s^2)
    sigmas = [80.0, 0.8, 0.1]
    few = consistency(z, sigmas)
    v = one_var
    for s in sigmas[1:]:
        v = (v + s**2 - 0.002**2) * target / (C**2 + s**2)
    assert abs(v - target) < abs(one_var - target)  # every step pulls the law to the target
    assert math.isclose(float(few.var()), v, rel_tol=0.02)
    assert abs(float(few.mean())) < 0.01
    # the fresh noise is a function of z: the same z, the same samples, in any batch
    assert torch.equal(consistency(z[:100], sigmas), few[:100])
    torch.testing.assert_close(consistency(z[50:150], sigmas), few[50:150], rtol=0, atol=0)
    # the same steps by hand, with the noise `per_sample_noise` gives each z

    def level(s: float) -> torch.Tensor:
        return torch.full((z.shape[0],), s, dtype=torch.float64)

    noise = per_sample_noise(z, 2)
    x = exact_consistency(80 * z, level(80.0))
    for k, s in enumerate(sigmas[1:]):
        x = exact_consistency(x + math.sqrt(s**2 - 0.002**2) * noise[k], level(s))
    torch.testing.assert_close(few, x, rtol=1e-12, atol=1e-12)


def test_per_sample_noise_is_standard_normal_and_a_function_of_z() -> None:
    z = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    noise = per_sample_noise(z, 2)
    assert noise.shape == (2, 4000, 1, 2, 2) and noise.dtype == z.dtype
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02
    assert torch.equal(per_sample_noise(z[7:9], 2), noise[:, 7:9])
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(per_sample_noise(z + 1e-3, 2), noise)


def test_one_step_sampling_uses_no_noise_and_one_call() -> None:
    calls = []

    def f(x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        calls.append(s.clone())
        return exact_consistency(x, s)

    z = torch.randn(4, 1, 2, 2)
    state = torch.get_rng_state()
    out = consistency(z, [80.0], f)
    assert torch.equal(torch.get_rng_state(), state) and len(calls) == 1
    torch.testing.assert_close(calls[0], torch.full((4,), 80.0))
    torch.testing.assert_close(out, exact_consistency(80 * z, torch.full((4,), 80.0)))
    consistency(z, [80.0, 2.0, 0.5], f)
    assert len(calls) == 4 and torch.equal(torch.get_rng_state(), state)  # its noise draws on generators of its own
    with pytest.raises(RecipeError, match="sigma_min"):
        consistency(z, [80.0, 0.001], f)
