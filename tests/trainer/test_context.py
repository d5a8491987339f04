"""The trainer's step context: reductions, loss scaling, micro-batches, gradient sanitising."""
from __future__ import annotations

import torch

from sidbench.trainer.context import StepContext, sanitize_gradients, split_batch


def linear_setup() -> tuple[torch.nn.Linear, StepContext, torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    data = torch.randn(8, 3)
    return net, opt, data


def test_update_backpropagates_sum_times_scale_over_batch() -> None:
    net, opt, data = linear_setup()
    w0 = net.weight.detach().clone()
    ctx = StepContext({"g": net}, {"g": opt}, torch.device("cpu"), batch=8)
    ctx.update("g", lambda n: ((net(data[:n]) ** 2).sum(), {}), loss_scale=100.0)
    # gradient of sum (w.x)^2 is sum 2 (w.x) x; the step is lr * scale / batch times it
    expected_grad = (2 * (data @ w0.T) * data).sum(0, keepdim=True) * 100.0 / 8
    torch.testing.assert_close(net.weight.detach(), w0 - expected_grad)


def test_micro_batches_accumulate_to_the_same_step() -> None:
    results = []
    for batch_gpu in (None, 3):
        net, opt, data = linear_setup()
        ctx = StepContext({"g": net}, {"g": opt}, torch.device("cpu"), batch=8, batch_gpu=batch_gpu)
        offset = iter([0, 3, 6]) if batch_gpu else iter([0])

        def loss_fn(n: int) -> tuple[torch.Tensor, dict[str, float]]:
            start = next(offset)
            loss = (net(data[start:start + n]) ** 2).sum()
            return loss, {"loss": loss.item() / n}

        logs = ctx.update("g", loss_fn)
        results.append((net.weight.detach().clone(), logs["loss"]))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert abs(results[0][1] - results[1][1]) < 1e-5
    assert split_batch(8, 3) == [3, 3, 2] and split_batch(8, None) == [8]


def test_non_finite_gradients_become_finite() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0])
    sanitize_gradients([p])
    assert p.grad.tolist() == [0.0, 1e5, -1e5, 2.0]


def test_update_sanitises_before_the_step() -> None:
    net, opt, data = linear_setup()
    ctx = StepContext({"g": net}, {"g": opt}, torch.device("cpu"), batch=8)
    ctx.update("g", lambda n: ((net(data[:n]) * float("nan")).sum(), {}))
    assert torch.isfinite(net.weight).all()


def test_same_seed_iteration_and_update_draw_the_same_noise() -> None:
    net, opt, _ = linear_setup()
    draws = []
    for _ in range(2):
        ctx = StepContext({"g": net}, {"g": opt}, torch.device("cpu"), batch=4, seed=5)
        ctx.iteration = 7
        draws.append([])
        for _ in range(2):
            ctx.update("g", lambda n: (draws[-1].append(torch.randn(n)) or net.weight.sum() * 0, {}))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[0][1])  # two updates of one iteration differ


def test_bf16_autocast_runs_on_cpu() -> None:
    net, opt, data = linear_setup()
    ctx = StepContext({"g": net}, {"g": opt}, torch.device("cpu"), batch=8, precision="bf16")
    dtypes = []

    def loss_fn(n: int) -> tuple[torch.Tensor, dict[str, float]]:
        out = net(data[:n])
        dtypes.append(out.dtype)
        return (out.float() ** 2).sum(), {}

    ctx.update("g", loss_fn)
    assert dtypes == [torch.bfloat16] and net.weight.dtype == torch.float32
