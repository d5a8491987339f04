"""Progressive distillation's grid, target, loss and sampler (docs/baselines.md#progressive-distillation),
against values worked out by hand: a point mass at 0 (D = 0, ODE flow x(s) = x(t) s/t) and data
N(0, c^2) per pixel (D(x, s) = x c^2/(c^2 + s^2), ODE flow
x(s) = x(t) sqrt(s^2 + c^2)/sqrt(t^2 + c^2))."""
from __future__ import annotations

import math

import pytest
import torch

from sidbench.diffusion import euler_step, karras_sigma, karras_sigmas, nested_sigmas, sample_euler
from sidbench.methods.baselines.progressive.loss import (
    progressive_loss, progressive_target, sample_stage_sigmas, stage_sigmas, teacher_target,
)
from sidbench.testing.gaussian import GaussianDenoiser

C = 0.5  # data std of the Gaussian test bed
A, B = 80.0 ** (1 / 7), 0.002 ** (1 / 7)  # Karras: sigma(f) = (A + f (B - A))^7


def sigma_by_hand(f: float) -> float:
    return (A + f * (B - A)) ** 7


def gaussian_teacher() -> GaussianDenoiser:
    """The exact denoiser of N(0, C^2 I) on 1x2x2 images, in float64."""
    return GaussianDenoiser(torch.zeros(4), C * torch.eye(4), (1, 2, 2)).double().requires_grad_(False)


def point_mass(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    return torch.zeros_like(x)


def euler_factor(s: float, s_next: float) -> float:
    """x_next / x for one Euler step on N(0, C^2): (x - D)/s = x s/(C^2 + s^2)."""
    return 1 + (s_next - s) * s / (C**2 + s**2)


def col(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1, 1, 1)


# -- the grid --------------------------------------------------------------------------------------
def test_karras_sigma_endpoints() -> None:
    assert math.isclose(float(karras_sigma(torch.tensor(0.0, dtype=torch.float64))), 80.0, rel_tol=1e-12)
    assert math.isclose(float(karras_sigma(torch.tensor(1.0, dtype=torch.float64))), 0.002, rel_tol=1e-12)


def test_stage_sigmas_first_and_last_step_by_hand() -> None:
    n = 4
    t, t2, t3 = stage_sigmas(n, torch.tensor([0, n - 1]), dtype=torch.float64)
    assert t.shape == t2.shape == t3.shape == (2, 1, 1, 1)
    expected_t = [80.0, sigma_by_hand(3 / 4)]
    expected_t2 = [sigma_by_hand(0.5 / 4), sigma_by_hand(3.5 / 4)]
    expected_t3 = [sigma_by_hand(1 / 4), 0.0]  # the last step ends at 0 (final_zero)
    for got, want in ((t, expected_t), (t2, expected_t2), (t3, expected_t3)):
        torch.testing.assert_close(got.flatten(), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    _, _, t3_min = stage_sigmas(n, torch.tensor([n - 1]), final_zero=False, dtype=torch.float64)
    assert math.isclose(float(t3_min), 0.002, rel_tol=1e-12)


def test_stage_sigmas_rejects_out_of_range_index() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        stage_sigmas(4, torch.tensor([4]))
    with pytest.raises(ValueError):
        stage_sigmas(0, torch.tensor([0]))


def test_student_grid_by_hand_and_against_edm_grid() -> None:
    assert nested_sigmas(1).tolist() == [80.0, 0.0]  # 1 step: D(80 z, 80)
    two = nested_sigmas(2)
    torch.testing.assert_close(two, torch.tensor([80.0, ((A + B) / 2) ** 7, 0.0], dtype=torch.float64))
    # EDM's (N+1)-step grid reaches sigma_min at i/N = 1; the student drops that point for the 0.
    for n in (1, 3, 8):
        edm = karras_sigmas(n + 1)
        expected = torch.cat([edm[:n], edm.new_zeros(1)])
        torch.testing.assert_close(nested_sigmas(n), expected, rtol=1e-12, atol=0)
    assert math.isclose(float(nested_sigmas(4, final_zero=False)[-1]), 0.002, rel_tol=1e-12)


def test_student_samples_on_the_points_it_trains_on_and_grids_nest() -> None:
    n = 8
    i = torch.arange(n)
    t, t2, t3 = stage_sigmas(n, i, dtype=torch.float64)
    grid, teacher_grid = nested_sigmas(n), nested_sigmas(2 * n)
    torch.testing.assert_close(t.flatten(), grid[:-1], rtol=1e-12, atol=0)
    torch.testing.assert_close(t3.flatten(), grid[1:], rtol=1e-12, atol=0)
    # The teacher's 2N-step grid holds the student's points and the midpoints t2.
    torch.testing.assert_close(teacher_grid[::2], grid, rtol=1e-12, atol=0)
    torch.testing.assert_close(teacher_grid[1::2], t2.flatten(), rtol=1e-12, atol=0)
    assert bool((t > t2).all() and (t2 > t3).all() and (t3 >= 0).all())


def test_sampled_step_index_is_uniform() -> None:
    gen = torch.Generator().manual_seed(0)
    t, t2, t3 = sample_stage_sigmas(40000, 4, generator=gen, dtype=torch.float64)
    assert t.shape == (40000, 1, 1, 1)
    grid = nested_sigmas(4)
    for k in range(4):
        share = float((t == grid[k]).double().mean())
        assert abs(share - 0.25) < 0.015, (k, share)
    assert bool((t > t2).all() and (t2 > t3).all())


# -- Euler steps and the target --------------------------------------------------------------------
def test_euler_step_per_sample_is_exact_for_a_point_mass() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    s_from, s_to = col(80.0, 1.0, 0.3), col(20.0, 0.5, 0.0)
    got = euler_step(point_mass, x, s_from, s_to)
    torch.testing.assert_close(got, x * torch.tensor([20 / 80, 0.5, 0.0], dtype=torch.float64).reshape(-1, 1, 1, 1))
    assert torch.equal(got[2], torch.zeros_like(got[2]))  # a step to 0 is D itself


def test_euler_step_on_a_gaussian_by_hand() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    got = euler_step(gaussian_teacher(), x, col(2.0, 0.7), col(1.0, 0.2))
    factors = torch.tensor([euler_factor(2.0, 1.0), euler_factor(0.7, 0.2)], dtype=torch.float64)
    torch.testing.assert_close(got, x * factors.reshape(-1, 1, 1, 1))


def test_point_mass_target_is_its_denoiser() -> None:
    # Euler is exact on x(s) = x(t) s/t: x_t3 = x_t t3/t, so
    # x_tilde = x_t - t (x_t t3/t - x_t)/(t3 - t) = x_t - x_t (t3 - t)/(t3 - t) = 0 = D(x_t, t).
    torch.manual_seed(2)
    n = 4
    t, t2, t3 = stage_sigmas(n, torch.arange(n), dtype=torch.float64)
    x_t = torch.randn(n, 1, 2, 2, dtype=torch.float64) * t
    x_tilde = teacher_target(point_mass, x_t, t, t2, t3)
    torch.testing.assert_close(x_tilde, torch.zeros_like(x_tilde), atol=1e-12, rtol=0)


def test_one_student_step_lands_where_the_teachers_two_steps_land() -> None:
    torch.manual_seed(3)
    n = 4
    i = torch.tensor([0, 1, 2, 3])
    t, t2, t3 = stage_sigmas(n, i, dtype=torch.float64)
    x_t = torch.randn(4, 1, 2, 2, dtype=torch.float64) * (t**2 + C**2).sqrt()
    calls = []
    teacher = gaussian_teacher()

    def counted(x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        calls.append(s.shape)
        return teacher(x, s, labels)

    x_tilde = teacher_target(counted, x_t, t, t2, t3)
    assert len(calls) == 2 and x_tilde.dtype == torch.float64
    ts = [(float(a), float(b), float(c)) for a, b, c in zip(t.flatten(), t2.flatten(), t3.flatten())]
    # the teacher's two Euler steps, by hand: x_t3 = x_t a1 a2 (the last one to 0 gives D)
    two_steps = torch.tensor([euler_factor(a, b) * euler_factor(b, c) for a, b, c in ts], dtype=torch.float64)
    x_t3 = x_t * two_steps.reshape(-1, 1, 1, 1)
    expected_tilde = torch.tensor(
        [1 - a * (f - 1) / (c - a) for (a, _, c), f in zip(ts, two_steps.tolist())], dtype=torch.float64)
    torch.testing.assert_close(x_tilde, x_t * expected_tilde.reshape(-1, 1, 1, 1))

    def student(x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return x_tilde  # a student that has learned the target exactly

    torch.testing.assert_close(euler_step(student, x_t, t, t3), x_t3)


def test_target_from_the_exact_flow() -> None:
    """With x_t3 the exact ODE solution, one student Euler step reproduces the exact flow, and on a
    fine grid x_tilde tends to the exact denoiser x_t C^2/(C^2 + t^2)."""
    torch.manual_seed(4)
    x_t = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    for n, tol in ((4, None), (4096, 2e-3)):
        t, _, t3 = stage_sigmas(n, torch.tensor([0, n // 2, n - 2]), dtype=torch.float64)
        exact_t3 = x_t * ((t3**2 + C**2) / (t**2 + C**2)).sqrt()
        x_tilde = progressive_target(x_t, t, exact_t3, t3)
        stepped = x_t + (t3 - t) * (x_t - x_tilde) / t
        torch.testing.assert_close(stepped, exact_t3)
        if tol is not None:
            denoised = x_t * C**2 / (C**2 + t**2)
            torch.testing.assert_close(x_tilde, denoised, rtol=tol, atol=tol * 1e-2)


def test_target_at_t3_zero_is_x_t3_exactly() -> None:
    torch.manual_seed(5)
    x_t, x_t3 = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    t, t3 = torch.tensor([0.37, 2.0]).reshape(-1, 1, 1, 1), torch.tensor([0.0, 0.5]).reshape(-1, 1, 1, 1)
    got = progressive_target(x_t, t, x_t3, t3)
    assert torch.isfinite(got).all()
    assert torch.equal(got[0], x_t3[0])
    # the other sample by hand: x_t - 2 (x_t3 - x_t)/(0.5 - 2) = x_t + (4/3)(x_t3 - x_t)
    torch.testing.assert_close(got[1], x_t[1] + (4 / 3) * (x_t3[1] - x_t[1]))


def test_loss_is_truncated_snr_weighted() -> None:
    t = torch.tensor([0.5, 1.0, 2.0, 0.1]).reshape(-1, 1, 1, 1)
    denoised, x_tilde = torch.full((4, 1, 2, 2), 3.0), torch.full((4, 1, 2, 2), 1.0)
    got = progressive_loss(denoised, x_tilde, t)
    assert got.shape == denoised.shape
    expected = torch.tensor([4.0, 1.0, 1.0, 100.0]).reshape(-1, 1, 1, 1) * 4.0  # max(1/t^2, 1) * 2^2
    torch.testing.assert_close(got, expected.expand_as(got))


# -- the student sampler ---------------------------------------------------------------------------
def test_ideal_student_follows_its_2n_step_teacher() -> None:
    """A student whose denoiser is the target at every point of its grid samples, in N Euler
    steps, what the teacher samples in 2N (here: worked out by hand on N(0, C^2))."""
    torch.manual_seed(6)
    n = 2
    teacher = gaussian_teacher()
    grid = nested_sigmas(n)
    _, mids, _ = stage_sigmas(n, torch.arange(n), dtype=torch.float64)

    def ideal_student(x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        k = int(torch.argmin((grid[:-1] - s[0]).abs()))
        t, t2, t3 = (v.expand(x.shape[0]).reshape(-1, 1, 1, 1) for v in (grid[k], mids.flatten()[k], grid[k + 1]))
        return teacher_target(teacher, x, t, t2, t3)

    z = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    got = sample_euler(ideal_student, z, None, grid)
    teacher_grid = nested_sigmas(2 * n).tolist()
    factor = 80.0
    for s, s_next in zip(teacher_grid[:-1], teacher_grid[1:]):
        factor *= euler_factor(s, s_next)
    torch.testing.assert_close(got, z * factor)


def test_one_step_student_is_the_one_step_generator_and_costs_n_nfe() -> None:
    from sidbench.teachers.networks import build_edm_network
    from sidbench.testing.tiny import TINY_CONSTRUCTOR

    torch.manual_seed(7)
    net = build_edm_network(TINY_CONSTRUCTOR).eval()
    z = torch.randn(3, 1, 8, 8)
    calls = []

    def counted(x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        calls.append(s.clone())
        return net(x, s, labels)

    one = sample_euler(counted, z, None, nested_sigmas(1))
    assert one.dtype == z.dtype and len(calls) == 1
    with torch.no_grad():
        torch.testing.assert_close(one, net(80 * z, torch.full((3,), 80.0)), rtol=1e-6, atol=1e-6)
    calls.clear()
    four = sample_euler(counted, z, None, nested_sigmas(4))
    assert len(calls) == 4 and torch.isfinite(four).all()
    torch.testing.assert_close(torch.stack([c[0] for c in calls]), nested_sigmas(4)[:-1].float(), check_dtype=False)
