"""RAdam's update through Adam's fused kernel (`trainer.optimizer_kernel=fused` on the CPU) is
PyTorch's RAdam up to round-off, keeps its state, its step hooks and its LR scheduler's bookkeeping,
and stays out of the cases it cannot make."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from sidbench.trainer import fused_radam, speed

#: the fused kernel rounds in another order than the for-each one: last-bit differences a step
#: (measured: <= 3e-8 absolute after 40 steps of a 20-50-3 MLP)
ROUND_OFF = {"rtol": 1e-5, "atol": 1e-6}
STEPS = 40


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 50), torch.nn.Tanh(), torch.nn.Linear(50, 3))


def train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1, frozen_every: int = 0,
          kernel: str | None = None) -> None:
    """`steps` steps of a regression with a decaying LR; a `kernel` is switched on after the LR's
    schedule is made, in the trainer's order (a method builds its schedules, the trainer then sets
    the kernel; twice, as after a state reload). With `frozen_every`, the last layer's bias gets no
    gradient on those steps (RAdam skips it, so its step count falls behind the others')."""
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 / (1 + 0.1 * i))
    for _ in range(2 if kernel else 0):
        speed.set_optimizer_kernel([opt], kernel)
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        x = torch.randn(16, 20, generator=g)
        opt.zero_grad()
        net(x).square().mean().backward()
        if frozen_every and i % frozen_every == 0:
            net[2].bias.grad = None
        opt.step()
        schedule.step()


def pair(**radam: object) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module, torch.optim.Optimizer]:
    """Two copies of one network, each with a RAdam of the same settings."""
    a = mlp()
    b = copy.deepcopy(a)
    return a, torch.optim.RAdam(a.parameters(), lr=1e-2, **radam), b, torch.optim.RAdam(b.parameters(), lr=1e-2, **radam)


def count_kernels(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"adam": 0, "radam": 0}
    for name in calls:
        original = getattr(fused_radam, name)

        def counted(*args, _name=name, _original=original, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(fused_radam, name, counted)
    return calls


@pytest.mark.parametrize("radam", [{}, {"betas": (0.9, 0.99), "weight_decay": 0.01, "eps": 1e-3}, {"maximize": True}],
                         ids=["torch-defaults", "scd-betas-l2-large-eps", "maximize"])
def test_fused_radam_matches_torchs_radam(radam: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_kernels(monkeypatch)
    a, opt_a, b, opt_b = pair(**radam)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(a, opt_a, STEPS)
        train(b, opt_b, STEPS, kernel="fused")
    # the scheduler made before the switch sees its optimiser step, and no overridden step
    assert [str(w.message) for w in caught if "lr_scheduler" in str(w.message) or "optimizer.step" in str(w.message)] == []
    # RAdam's first steps are unrectified (SGD with momentum: its own kernel); the rest are Adam's fused
    assert calls["radam"] >= 1 and calls["adam"] >= STEPS - 8 and calls["radam"] + calls["adam"] == STEPS
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **ROUND_OFF)
    assert opt_b.state_dict()["param_groups"][0]["lr"] == opt_a.state_dict()["param_groups"][0]["lr"]


def test_its_state_is_radams_and_either_kernel_continues_the_other() -> None:
    a, opt_a, b, opt_b = pair()
    train(a, opt_a, 10)
    train(b, opt_b, 10, kernel="fused")
    saved = opt_b.state_dict()
    assert saved["state"].keys() == opt_a.state_dict()["state"].keys()
    assert all(s.keys() == {"step", "exp_avg", "exp_avg_sq"} and float(s["step"]) == 10 for s in saved["state"].values())
    plain = torch.optim.RAdam(b.parameters(), lr=1e-2)
    plain.load_state_dict(saved)  # the fused kernel's state, continued by PyTorch's RAdam
    train(a, opt_a, 10, seed=2)
    train(b, plain, 10, seed=2)
    fused = torch.optim.RAdam(b.parameters(), lr=1e-2)
    fused.load_state_dict(plain.state_dict())  # and back: PyTorch's state, continued by the fused kernel
    train(a, opt_a, 10, seed=3)
    train(b, fused, 10, seed=3, kernel="fused")
    assert fused._sidbench_fused_radam and float(fused.state[b[0].weight]["step"]) == 30
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **ROUND_OFF)


def test_parameters_at_different_step_counts_keep_radams_update(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_kernels(monkeypatch)
    a, opt_a, b, opt_b = pair()
    train(a, opt_a, STEPS, frozen_every=7)
    train(b, opt_b, STEPS, frozen_every=7, kernel="fused")
    assert float(opt_b.state[b[2].bias]["step"]) < float(opt_b.state[b[0].weight]["step"])
    # each count is its own call (the kernel's rectification is one number): the lagging bias
    # makes a second call on the steps it takes, and its own unrectified first steps
    assert calls["adam"] > STEPS - 8 and calls["radam"] + calls["adam"] > STEPS
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **ROUND_OFF)


def test_the_step_hooks_still_run() -> None:
    _, _, b, opt_b = pair()
    speed.set_optimizer_kernel([opt_b], "fused")
    seen: list[str] = []
    opt_b.register_step_pre_hook(lambda opt, args, kwargs: seen.append("pre"))
    opt_b.register_step_post_hook(lambda opt, args, kwargs: seen.append("post"))
    train(b, opt_b, 8)
    assert seen == ["pre", "post"] * 8


@pytest.mark.parametrize(("case", "build"), [
    ("decoupled weight decay", lambda p: torch.optim.RAdam(p, weight_decay=0.01, decoupled_weight_decay=True)),
    ("a tensor LR", lambda p: torch.optim.RAdam(p, lr=torch.tensor(1e-3))),
    ("not on the CPU", lambda p: torch.optim.RAdam([torch.nn.Parameter(torch.zeros(2, device="meta"))])),
    ("not RAdam", lambda p: torch.optim.SGD(p, lr=0.1)),
])
def test_cases_the_fused_kernel_cannot_make_keep_their_own_step(case: str, build) -> None:  # noqa: ANN001
    opt = build(mlp().parameters())
    assert not fused_radam.fuses(opt), case
    speed.set_optimizer_kernel([opt], "fused")
    assert not getattr(opt, "_sidbench_fused_radam", False)


def test_rectification_starts_where_the_paper_says() -> None:
    # Liu et al. 2020: rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t) ~ t for small t, so the SMA length
    # passes 5 at the 6th step; r_6 = sqrt(2 * 4 * 1999 / (1995 * 1997 * 6)) ~ 0.0259 with beta2 = 0.999,
    # and r_t rises towards 1 as rho_t approaches rho_inf = 1999
    assert fused_radam.rectification(5, 0.999) == 0.0
    assert fused_radam.rectification(6, 0.999) == pytest.approx(0.0259, abs=2e-4)
    assert fused_radam.rectification(1e6, 0.999) == pytest.approx(1.0)
