"""Easy consistency tuning's pure functions (methods/baselines/ect/loss.py, arXiv
2406.14548) against values worked out by hand, and on the analytic Gaussian test bed.

On a Gaussian, ECT's loss is NOT zero at the exact consistency function: x + t e and x + r e with
one noise e lie on one probability-flow trajectory only when the data is a single point (then the
trajectories are the straight lines x + t e). So the analytic tests are: the single point, where the
loss and its gradient vanish exactly at the exact function; and a Gaussian, where training a family
that holds the exact function with ECT's loss and schedule drives it to that function although
the loss stays of order one.
"""
from __future__ import annotations

import math

import pytest
import torch

from sidbench.eval.frechet import frechet_distance
from sidbench.methods.baselines.ect.loss import (
    ECT_SIGMA_MIN, decay, ect_loss, sample_t, stage_of, stage_starts, t_to_r,
)
from sidbench.testing.gaussian import random_gaussian
from sidbench.testing.gaussian_consistency import GaussianConsistency


def col(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1, 1, 1)


class Scaled(torch.nn.Module):
    """f(x, sigma) = a x / (1 + sigma), one weight a: outputs computable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.calls: list[bool] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(torch.is_grad_enabled())
        return self.a * x / (1 + sigma.reshape(-1, 1, 1, 1))


# -- t, r and the stages ---------------------------------------------------------------------------
def test_r_hand_values() -> None:
    # sigmoid(-1) = 0.26894142, n(1) = 3.15153137; sigmoid(-4) = 0.01798621, n(4) = 1.14388968
    r = t_to_r(col([1.0, 4.0]), 0)
    torch.testing.assert_close(r.flatten(), torch.tensor([0.0, 4 * (1 - 0.5 * 1.14388968)], dtype=torch.float64))
    torch.testing.assert_close(t_to_r(col([1.0]), 3).flatten(), torch.tensor([1 - 3.15153137 / 16], dtype=torch.float64))
    torch.testing.assert_close(t_to_r(col([2.0]), 1, mapping="const").flatten(), torch.tensor([1.5], dtype=torch.float64))
    torch.testing.assert_close(t_to_r(col([2.0]), 0, q=4, mapping="const").flatten(),
                               torch.tensor([1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="mapping"):
        t_to_r(col([1.0]), 0, mapping="linear")


def test_r_moves_toward_t_as_stages_grow() -> None:
    t = torch.logspace(-3, 2, 50, dtype=torch.float64).reshape(-1, 1, 1, 1)
    gaps = [t - t_to_r(t, s) for s in range(10)]
    assert all(bool((g > 0).all()) for g in gaps)  # r < t always
    for a, b in zip(gaps, gaps[1:]):
        assert bool((b <= a).all())
    assert float((gaps[-1] / t).max()) <= decay(9) * 5 + 1e-12  # n(t) <= 1 + k/2 = 5
    assert float(t_to_r(t, 0).min()) == 0.0  # clipped, not negative


def test_decay_and_stages() -> None:
    assert decay(0) == 0.5 and decay(3) == 1 / 16 and decay(1, q=256) == 256.0**-2
    with pytest.raises(ValueError):
        decay(-1)
    # run_ecm.sh: --double 250 ticks of --tick 12.8 kimg = 3.2 Mimg; --duration 25.6 Mimg
    assert stage_starts(25600, 250 * 12.8) == [3200.0 * s for s in range(8)]
    assert stage_starts(100, 3200) == [0.0]
    assert stage_of(3199.99, 3200) == 0 and stage_of(3200, 3200) == 1 and stage_of(25599, 3200) == 7
    with pytest.raises(ValueError):
        stage_starts(100, 0)


def test_t_is_lognormal() -> None:
    torch.manual_seed(0)
    u = torch.randn([5, 1, 1, 1])
    torch.manual_seed(0)
    t = sample_t(5, -1.1, 2.0)
    assert t.shape == (5, 1, 1, 1)
    torch.testing.assert_close(t, (-1.1 + 2.0 * u).exp())
    torch.manual_seed(1)
    log_t = sample_t(200_000).log()
    assert abs(float(log_t.mean()) + 1.1) < 0.02 and abs(float(log_t.std()) - 2.0) < 0.02


# -- the loss --------------------------------------------------------------------------------------
def test_loss_hand_values() -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    e = torch.ones_like(x)
    # f(x + 2e, 2) = [3, 4]/3, f(x + e, 1) = [2, 3]/2: distance 1/6, over t - r = 1
    f = Scaled()
    loss = ect_loss(f, x, col([2.0]), col([1.0]), e)
    torch.testing.assert_close(loss, torch.tensor([1 / 6], dtype=torch.float32))
    loss.sum().backward()
    # d/da of |a u - sg(a v)| / (t - r) at a = 1 = (u - v).u / |u - v| = -(1/6)(4/3) / (1/6); with
    # a gradient through the target it would be (u - v).(u - v)/|u - v| = +1/6
    torch.testing.assert_close(f.a.grad, torch.tensor(-4 / 3, dtype=torch.float64))
    assert f.calls == [True, False]  # the target call has no graph
    # pseudo-Huber: sqrt(1/36 + 0.01) - 0.1
    c_loss = ect_loss(Scaled(), x, col([2.0]), col([1.0]), e, c=0.1)
    torch.testing.assert_close(c_loss, torch.tensor([math.sqrt(1 / 36 + 0.01) - 0.1], dtype=torch.float32))
    # r = 0: the data is the target, f(x + 2e, 2) - x = [0, -2/3], over t = 2; no target call
    f = Scaled()
    torch.testing.assert_close(ect_loss(f, x, col([2.0]), col([0.0]), e), torch.tensor([1 / 3], dtype=torch.float32))
    assert f.calls == [True]
    with pytest.raises(ValueError):
        ect_loss(Scaled(), x, col([2.0]), col([1.0]), e, c=-1.0)


def test_mixed_batch_uses_data_where_r_is_zero() -> None:
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64).reshape(2, 1, 1, 2)
    e = torch.ones_like(x)
    f = Scaled()
    loss = ect_loss(f, x, col([2.0, 2.0]), col([1.0, 0.0]), e)
    torch.testing.assert_close(loss, torch.tensor([1 / 6, 1 / 3], dtype=torch.float32))
    assert f.calls == [True, False]


def test_both_calls_drop_the_same_units() -> None:
    """f = dropout of a constant: equal outputs iff the two calls share the mask."""
    drop = torch.nn.Dropout(0.5).train()

    def f(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return drop(torch.ones_like(x))

    x = torch.zeros(3, 1, 4, 4)
    t, r = torch.full((3, 1, 1, 1), 2.0), torch.full((3, 1, 1, 1), 1.0)
    torch.manual_seed(0)
    assert float(ect_loss(f, x, t, r, torch.randn_like(x)).abs().max()) == 0.0
    torch.manual_seed(0)
    assert float(ect_loss(f, x, t, r, torch.randn_like(x), shared_dropout=False).min()) > 0


def test_sampler_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """ECT's recipe through the registry: x = f(80 z, 80); x = f(x + sqrt(s^2 - s_min^2) e, s), with
    f(x, s) = x / (1 + s) by hand (a function that is not an EDM network is f as it is)."""
    from sidbench import diffusion

    f = Scaled()
    z = torch.ones(1, 1, 1, 2, dtype=torch.float64)
    e = torch.full_like(z, 2.0)
    monkeypatch.setattr(diffusion, "per_sample_noise", lambda noise, steps: e[None].expand(steps, *e.shape))
    one = diffusion.sample(f, z, None, {"sampler": "consistency", "sigmas": [80.0], "sigma_min": ECT_SIGMA_MIN})
    torch.testing.assert_close(one, z * 80 / 81)
    two = diffusion.sample(f, z, None, {"sampler": "consistency", "sigmas": [80.0, 0.821], "sigma_min": ECT_SIGMA_MIN})
    torch.testing.assert_close(two, (z * 80 / 81 + math.sqrt(0.821**2 - ECT_SIGMA_MIN**2) * e) / 1.821)


# -- the analytic test bed ------------------------------------------------------------------------
def test_single_point_data_loss_vanishes_at_the_exact_function() -> None:
    """Data = one point mu: x + t e is the ODE trajectory from mu, f* = mu everywhere. The loss and
    its gradient are zero there; a constant f = m != mu is consistent but misses the data target
    (where r = 0), which pins m = mu."""
    mu = torch.tensor([0.3, -0.2, 0.1, 0.5])
    x = mu.expand(64, 4).reshape(64, 1, 1, 4)
    torch.manual_seed(0)
    t = sample_t(64)
    r = t_to_r(t, 0)
    assert bool((r == 0).any()) and bool((r > 0).any())
    noise = torch.randn_like(x)
    for exact in (True, False):
        m = torch.nn.Parameter(mu.clone() if exact else mu + 0.1)

        def f(y: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            return (m + 0 * y.reshape(len(y), -1)).reshape(y.shape)

        loss = ect_loss(f, x, t, r, noise, c=0.01)
        loss.mean().backward()
        positive = r.flatten() > 0
        assert float(loss[positive].abs().max()) == 0.0  # consistent either way
        if exact:
            assert float(loss.abs().max()) == 0.0 and float(m.grad.abs().max()) == 0.0
        else:
            assert float(loss[~positive].min()) > 0 and float(m.grad.abs().max()) > 0


def test_gaussian_tuning_converges_to_the_exact_consistency_function() -> None:
    """ECT's loss, stages and published t, r on N(mu, S) in 2-D, from a family that holds f*:
    400 Adam steps, a stage every 50, starting with the mean off by 0.3 per coordinate and the
    variances doubled. The parameters end near f*'s and the one-step sampler's law near N(mu, S),
    while the loss at f* itself stays of order one."""
    mu, cov = random_gaussian(2, seed=0)
    exact = GaussianConsistency.exact(mu, cov)
    f = GaussianConsistency(mu + 0.3, exact.log_var.detach().exp() * 2, exact.axes)
    opt = torch.optim.Adam(f.parameters(), lr=2e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / 400)
    factor = torch.linalg.cholesky(cov)

    def law_distance(g: GaussianConsistency) -> float:
        m, c = g.one_step_law()
        return frechet_distance(m.double().numpy(), c.double().numpy(), mu.double().numpy(), cov.double().numpy())

    start = law_distance(f)
    torch.manual_seed(0)
    for i in range(400):
        x = (mu + torch.randn(256, 2) @ factor.T).reshape(256, 1, 1, 2)
        t = sample_t(256)
        loss = ect_loss(f, x, t, t_to_r(t, i // 50), torch.randn_like(x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    assert float((f.mean - mu).norm()) < 0.05  # from 0.42
    assert float((f.log_var - exact.log_var).abs().max()) < 0.15  # from ln 2 = 0.69
    assert law_distance(f) < start / 50
    x = (mu + torch.randn(4096, 2) @ factor.T).reshape(4096, 1, 1, 2)
    t = sample_t(4096)
    with torch.no_grad():
        at_exact = ect_loss(exact, x, t, t_to_r(t, 7), torch.randn_like(x)).mean()
    assert float(at_exact) > 0.5
