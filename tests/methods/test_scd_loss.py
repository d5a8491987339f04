"""Continuous-time consistency distillation's pure functions (methods/baselines/scd/loss.py,
arXiv 2410.11081): the EDM <-> TrigFlow conversion, the tangent and its JVP, the
normalisation, the weighting and the log-variance head, against values worked out by hand, finite
differences and the analytic Gaussian test bed.

The tangent's identity: at warm-up ratio r = 1, g = cos(t) df-/dt with f = cos(t) x_t - sd sin(t) F
and x_t moving along the teacher's ODE (dx_t/dt = sd F_teacher). On a Gaussian with the exact
denoiser as teacher, the exact consistency function is constant along that ODE, so its tangent
vanishes; any other student's does not.
"""
from __future__ import annotations

import math

import pytest
import torch

from sidbench.methods.baselines.consistency import rng
from sidbench.methods.baselines.scd.loss import (
    LogVarianceHead, consistency_from_F, denoiser_F, edm_from_trigflow, edm_sigma, normalize_tangent, sample_sigma,
    scd_loss, tangent, tangent_jvp, teacher_velocity, trigflow_from_edm, trigflow_noise, trigflow_time,
    warmup_ratio,
)
from sidbench.teachers.networks import build_edm_network
from sidbench.testing.gaussian import GaussianDenoiser, random_gaussian
from sidbench.testing.gaussian_consistency import GaussianConsistency
from sidbench.testing.tiny import TINY_CONSTRUCTOR

SD = 0.5
SIGMAS = torch.tensor([0.002, 0.05, 0.5, 2.0, 20.0, 80.0], dtype=torch.float64)


def tiny_net(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_edm_network({**TINY_CONSTRUCTOR, **overrides})
    with torch.no_grad():  # EDM zero-initialises its output layers: random weights everywhere
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def gaussian(dim: int = 4, seed: int = 0,
             dtype: torch.dtype = torch.float64) -> tuple[GaussianDenoiser, GaussianConsistency]:
    """The exact denoiser and the exact consistency function of a random N(mu, S) on [1, 2, 2] images."""
    mu, cov = random_gaussian(dim, seed)
    teacher = GaussianDenoiser(mu, torch.linalg.cholesky(cov), (1, 2, 2)).to(dtype).requires_grad_(False)
    # the teacher's own covariance (its float32-rounded factor squared), in full precision
    exact = GaussianConsistency.exact(teacher.mean, teacher.factor @ teacher.factor.T)
    return teacher, exact.requires_grad_(False)


# -- conversions -----------------------------------------------------------------------------------
def test_time_and_sigma_round_trip() -> None:
    t = trigflow_time(SIGMAS)
    torch.testing.assert_close(edm_sigma(t), SIGMAS, rtol=1e-12, atol=0)
    torch.testing.assert_close(trigflow_time(torch.tensor([0.5], dtype=torch.float64)),
                               torch.tensor([math.pi / 4], dtype=torch.float64))
    assert float(trigflow_time(torch.tensor([0.0]))) == 0.0
    assert 0 < float(t.max()) < math.pi / 2


def test_x_round_trip_and_noise_scaling() -> None:
    torch.manual_seed(0)
    x0, n = torch.randn(6, 1, 2, 2, dtype=torch.float64), torch.randn(6, 1, 2, 2, dtype=torch.float64)
    t = trigflow_time(SIGMAS)
    x_sigma = x0 + SIGMAS.reshape(-1, 1, 1, 1) * n
    x_t = trigflow_from_edm(x_sigma, t)
    torch.testing.assert_close(edm_from_trigflow(x_t, t), x_sigma)
    # x_t = cos t x0 + sin t z with z = sd n: the same point
    torch.testing.assert_close(trigflow_noise(x0, SD * n, t), x_t)


def test_F_of_an_edm_network_is_minus_its_raw_output() -> None:
    """EDM's c_skip, c_out, c_in at sigma = sd tan t are cos^2 t, sd sin t, cos(t)/sd, so the
    TrigFlow F of an EDMPrecond is minus its UNet's output at (x_t / sd, ln(sigma) / 4)."""
    net = tiny_net().eval()
    torch.manual_seed(1)
    x_t = torch.randn(6, 1, 8, 8)
    t = trigflow_time(SIGMAS)
    F = denoiser_F(net, x_t, t)
    sigma = edm_sigma(t).float()
    raw = net.model(x_t / SD, sigma.log() / 4, None, None)
    # F divides D - cos(t) x_t, float32 round-off of O(|x|), by sd sin t (0.004 at sigma 0.002)
    torch.testing.assert_close(F, -raw, rtol=1e-4, atol=2e-4)
    # f = cos t x_t - sd sin t F is the denoiser's output at (x_t / cos t, sd tan t)
    torch.testing.assert_close(consistency_from_F(x_t, t, F), net(edm_from_trigflow(x_t, t), sigma), rtol=1e-5, atol=1e-5)


def test_sigma_is_a_truncated_lognormal() -> None:
    torch.manual_seed(0)
    sigma = sample_sigma(100_000, -1.0, 1.4)
    assert sigma.dtype == torch.float64 and sigma.shape == (100_000,)
    assert float(sigma.min()) >= 0.002 and float(sigma.max()) <= 80.0
    assert abs(float(sigma.log().median()) + 1.0) < 0.03 and abs(float(sigma.log().std()) - 1.4) < 0.03
    tight = sample_sigma(10_000, 0.0, 3.0, sigma_min=0.5, sigma_max=2.0)
    assert float(tight.min()) >= 0.5 and float(tight.max()) <= 2.0
    with pytest.raises(ValueError):
        sample_sigma(4, sigma_min=1.0, sigma_max=0.5)


# -- the tangent -----------------------------------------------------------------------------------
def test_tangent_jvp_matches_finite_differences() -> None:
    """cos t sin t dF/dt along (dx/dt, 1): float32 JVP against float64 central differences."""
    teacher, _ = gaussian()
    student32 = GaussianDenoiser(teacher.mean.float() + 0.1, 0.8 * teacher.factor.float(), (1, 2, 2))
    student64 = GaussianDenoiser(student32.mean, student32.factor, (1, 2, 2)).double()
    torch.manual_seed(0)
    x_t = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    t = trigflow_time(SIGMAS)
    dxdt = teacher_velocity(teacher, x_t, t)
    F_dot = tangent_jvp(lambda x, s: denoiser_F(student64, x, s), x_t, t, dxdt, precision=torch.float64)
    h = 1e-5
    scale = (torch.cos(t) * torch.sin(t)).reshape(-1, 1, 1, 1)
    plus = denoiser_F(student64, x_t + h * scale * dxdt, t + h * scale.flatten())
    minus = denoiser_F(student64, x_t - h * scale * dxdt, t - h * scale.flatten())
    fd = (plus - minus) / (2 * h)
    torch.testing.assert_close(F_dot, fd, rtol=1e-6, atol=1e-8 * float(fd.abs().max()))
    # the float32 JVP (the default): round-off of F's cancellation (cos t x_t - D) / sin t, 1e-3 of
    # the largest value at sigma = 0.002, far less above
    F_dot32 = tangent_jvp(lambda x, s: denoiser_F(student32, x, s), x_t.float(), t, dxdt.float())
    assert F_dot32.dtype == torch.float32
    torch.testing.assert_close(F_dot32.double(), fd, rtol=1e-3, atol=1e-3 * float(fd.abs().max()))


def test_tangent_jvp_through_an_edm_network() -> None:
    """The JVP reaches t through EDMPrecond's coefficients and c_noise, and runs through attention."""
    net = tiny_net(attn_resolutions=[4]).eval()
    torch.manual_seed(0)
    x_t = torch.randn(6, 1, 8, 8)
    t = trigflow_time(SIGMAS[1:5])
    x_t = x_t[1:5]
    dxdt = torch.randn_like(x_t)
    F_dot = tangent_jvp(lambda x, s: denoiser_F(net, x, s), x_t, t, dxdt)
    h = 1e-3  # float32 network: a coarser step, a looser comparison
    scale = (torch.cos(t) * torch.sin(t)).reshape(-1, 1, 1, 1).float()
    with torch.no_grad():
        fd = (denoiser_F(net, x_t + h * scale * dxdt, t + h * scale.flatten().double())
              - denoiser_F(net, x_t - h * scale * dxdt, t - h * scale.flatten().double())) / (2 * h)
    torch.testing.assert_close(F_dot, fd, rtol=5e-2, atol=1e-2 * float(fd.abs().max()))


def test_tangent_is_cos_t_times_the_derivative_along_the_teachers_ode() -> None:
    """g(r = 1) = -cos^2 t (sd F - dx/dt) - cos t sin t (x_t + sd dF/dt) = cos t df/dt."""
    teacher, _ = gaussian()
    student = GaussianDenoiser(teacher.mean + 0.2, 0.7 * teacher.factor, (1, 2, 2)).double().requires_grad_(False)
    torch.manual_seed(0)
    x_t = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    t = trigflow_time(SIGMAS)
    dxdt = teacher_velocity(teacher, x_t, t)
    F = denoiser_F(student, x_t, t)
    F_dot = tangent_jvp(lambda x, s: denoiser_F(student, x, s), x_t, t, dxdt, precision=torch.float64)
    g = tangent(F, F_dot, x_t, t, dxdt, ratio=1.0)
    h = 1e-6

    def f_along(step: float) -> torch.Tensor:
        s = t + step
        x = x_t + step * dxdt  # first order along the ODE: enough for a central difference of f
        return consistency_from_F(x, s, denoiser_F(student, x, s))

    df_dt = (f_along(h) - f_along(-h)) / (2 * h)
    expected = torch.cos(t).reshape(-1, 1, 1, 1) * df_dt
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    # the first term alone at r = 0
    torch.testing.assert_close(tangent(F, F_dot, x_t, t, dxdt, ratio=0.0),
                               -(torch.cos(t) ** 2).reshape(-1, 1, 1, 1) * (SD * F - dxdt))


def test_tangent_vanishes_for_the_exact_consistency_function() -> None:
    teacher, exact = gaussian()
    torch.manual_seed(0)
    x0 = teacher.mean.reshape(1, 1, 2, 2) + 0.3 * torch.randn(6, 1, 2, 2, dtype=torch.float64)
    t = trigflow_time(SIGMAS)
    x_t = trigflow_noise(x0, SD * torch.randn_like(x0), t)
    dxdt = teacher_velocity(teacher, x_t, t)
    sizes = {}
    for name, student in (("exact", exact), ("denoiser", teacher)):
        for precision in (torch.float64, torch.float32):
            F = denoiser_F(student, x_t, t)
            F_dot = tangent_jvp(lambda x, s, net=student: denoiser_F(net, x, s), x_t, t, dxdt, precision=precision)
            first = tangent(F, F_dot, x_t, t, dxdt, ratio=0.0)
            g = tangent(F, F_dot, x_t, t, dxdt, ratio=1.0)
            sizes[name, precision] = float((g.flatten(1).norm(dim=1) / first.flatten(1).norm(dim=1)).max())
    # the exact function's tangent is round-off of the size of its two terms: float64 round-off,
    # or float32's amplified by 1 / (sd sin t) = 500 in F = (cos t x_t - D) / (sd sin t) at
    # sigma = 0.002 (measured 3e-3 there; FastGen's float32 route has the same cancellation)
    assert sizes["exact", torch.float64] < 1e-9
    assert sizes["exact", torch.float32] < 1e-2
    assert min(sizes["denoiser", torch.float64], sizes["denoiser", torch.float32]) > 0.1


def test_jvp_keeps_the_forwards_dropout_mask() -> None:
    """F(x, s) = dropout(x) s: with the forward's state the JVP is mask (v s + x u) / (1 - p)."""
    drop = torch.nn.Dropout(0.5).train()

    def F_fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return drop(x) * s.reshape(-1, 1, 1, 1).to(x.dtype)

    x = torch.rand(4, 1, 4, 4) + 0.5
    t = torch.full((4,), 0.7, dtype=torch.float64)
    v = torch.randn_like(x)
    state = rng.capture(x.device)
    forward = F_fn(x, t)
    mask = (forward != 0).float()
    F_dot = tangent_jvp(F_fn, x, t, v, state=state)
    scale = math.cos(0.7) * math.sin(0.7)
    expected = mask * 2 * (scale * v * 0.7 + x * scale)
    torch.testing.assert_close(F_dot, expected)
    other = tangent_jvp(F_fn, x, t, v)  # a mask of its own
    assert not torch.allclose(other, expected)


# -- normalisation, warm-up, loss, head --------------------------------------------------------------
def test_normalisation_hand_values() -> None:
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(normalize_tangent(g, 0.1, "l2"), g / 5.1)
    torch.testing.assert_close(normalize_tangent(g, 0.1, "rms"), g / (5 / math.sqrt(2) + 0.1))
    with pytest.raises(ValueError):
        normalize_tangent(g, 0.1, "max")


def test_warmup_ratio() -> None:
    assert warmup_ratio(0, 10_000) == 0.0 and warmup_ratio(2500, 10_000) == 0.25
    assert warmup_ratio(20_000, 10_000) == 1.0 and warmup_ratio(3, 0) == 1.0


def test_loss_hand_values_and_gradients() -> None:
    F = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[0.3, -0.4]], dtype=torch.float64)
    logvar = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([2.0], dtype=torch.float64)
    # w mean(g^2) / (e^lv D) + lv = 0.5 * 0.125 / (e^0.5 * 2) + 0.5
    term = 0.5 * 0.125 / (math.exp(0.5) * 2)
    loss = scd_loss(F, g, logvar, sigma)
    torch.testing.assert_close(loss, torch.tensor([term + 0.5], dtype=torch.float64))
    loss.sum().backward()
    torch.testing.assert_close(F.grad, -2 * 0.5 * g / (math.exp(0.5) * 2 * 2))
    torch.testing.assert_close(logvar.grad, torch.tensor([1 - term], dtype=torch.float64))
    doubled = torch.tensor([2 * term + 0.5], dtype=torch.float64)
    torch.testing.assert_close(scd_loss(F, g, logvar, sigma, divide_by_dim=False), doubled)
    torch.testing.assert_close(scd_loss(F, g, logvar, sigma, prior_weighting=False), doubled)


@pytest.mark.parametrize("model", ["SongUNet", "DhariwalUNet"])
def test_log_variance_head(model: str) -> None:
    overrides = {"model_type": model, "model_channels": 8} if model == "DhariwalUNet" else {}
    net = tiny_net(**overrides)
    head = LogVarianceHead.for_network(net)
    sigma = torch.tensor([0.01, 1.0, 50.0])
    c_noise = sigma.log() / 4
    torch.testing.assert_close(head.embedding(c_noise), net.model.map_noise(c_noise))
    expected = head.embedding(c_noise) @ head.linear.weight.T + head.linear.bias
    torch.testing.assert_close(head(sigma), expected.reshape(-1))
    assert head(sigma).shape == (3,)
    assert float(head.linear.bias.abs().max()) == 0.0 and head.linear.weight.shape == (1, net.model.map_noise.num_channels)
    with pytest.raises(ValueError, match="noise embedding"):
        LogVarianceHead.for_network(torch.nn.Linear(2, 2))


# -- the analytic test bed: sCD converges toward the exact consistency function ----------------------
def test_gaussian_distillation_converges_to_the_exact_consistency_function() -> None:
    """sCD's whole training signal (truncated-lognormal sigma, the teacher's velocity, the JVP
    tangent with its warm-up and normalisation, the adaptive weight learnt by a log-variance head)
    on N(mu, S) in 4-D, from a family that holds f*, started with the mean off by 0.3 per coordinate
    and the variances doubled: 100 Adam steps end near f*'s parameters. The exact teacher and float64 JVP keep
    round-off out of it. (The head here is a free logvar per noise level bucket: the analytic
    family has no noise embedding.)"""
    teacher, exact = gaussian()
    student = GaussianConsistency(exact.mean + 0.3, exact.log_var.exp() * 2, exact.axes)
    edges = torch.linspace(-6, 5, 12, dtype=torch.float64)
    logvar = torch.nn.Parameter(torch.zeros(len(edges) + 1, dtype=torch.float64))
    opt = torch.optim.Adam([*student.parameters(), logvar], lr=2e-2)
    mu, factor = teacher.mean.reshape(-1), teacher.factor
    start_mean = float((student.mean - exact.mean).detach().norm())
    start_var = float((student.log_var - exact.log_var).detach().abs().max())
    torch.manual_seed(0)
    n, steps = 128, 100
    for i in range(steps):
        x0 = (mu + torch.randn(n, 4, dtype=torch.float64) @ factor.T).reshape(n, 1, 2, 2)
        sigma = sample_sigma(n)
        t = trigflow_time(sigma, SD)
        x_t = trigflow_noise(x0, SD * torch.randn_like(x0), t)
        dxdt = teacher_velocity(teacher, x_t, t)
        F = denoiser_F(student, x_t, t)
        F_dot = tangent_jvp(lambda x, s: denoiser_F(student, x, s), x_t, t, dxdt, precision=torch.float64)
        g = normalize_tangent(tangent(F.detach(), F_dot, x_t, t, dxdt, warmup_ratio(i + 1, 50)))
        lv = logvar[torch.bucketize(sigma.log(), edges)]
        loss = scd_loss(F, g, lv, sigma).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # measured: 0.0022 and 0.0089 after 100 steps (0.0053 and 0.0017 after 250)
    assert float((student.mean - exact.mean).detach().norm()) < start_mean / 20  # from 0.6
    assert float((student.log_var - exact.log_var).detach().abs().max()) < start_var / 10  # from ln 2 = 0.69
