"""Counted compute: passes from hooks on every network call, FLOPs from the operations executed."""
from __future__ import annotations

import torch

from sidbench.trainer.compute import ComputeCounter


def conv_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1))


def conv_forward_flops(n: int, h: int, w: int) -> int:
    # 2 FLOPs per multiply-add: 2 * C_in * k * k * C_out per output pixel, for each convolution
    return 2 * n * h * w * (3 * 9 * 8 + 8 * 9 * 4)


def test_flops_of_a_small_convolution_network_match_the_analytic_count() -> None:
    net = conv_net()
    counter = ComputeCounter()
    counter.attach({"net": net})
    x = torch.randn(5, 3, 16, 16)
    with counter.iteration():
        with torch.no_grad():
            net(x)
    assert counter.cost.flops == conv_forward_flops(5, 16, 16) and counter.cost.passes == 5

    # trained: backward to the weights and through the activations. The first convolution's input
    # needs no gradient, so it computes only its weight gradient: 1 forward's worth; the second
    # computes both: 2 forwards' worth.
    counter = ComputeCounter()
    counter.attach({"net": net})
    with counter.iteration():
        net(x).square().sum().backward()
    first, second = 2 * 5 * 256 * 3 * 9 * 8, 2 * 5 * 256 * 8 * 9 * 4
    assert counter.cost.flops == conv_forward_flops(5, 16, 16) + first + 2 * second
    assert counter.cost.passes == 5 * (1 + 2)


def test_passes_count_forward_1_trained_backward_2_input_only_backward_1() -> None:
    trained, frozen, teacher = conv_net(), conv_net().requires_grad_(False), conv_net().requires_grad_(False)
    counter = ComputeCounter(count_flops=False)
    counter.attach({"trained": trained, "frozen": frozen, "teacher": teacher})
    x = torch.randn(2, 3, 8, 8)
    with counter.iteration():
        with torch.no_grad():
            frozen(x)                                    # forward only: 2
        y = trained(x)                                   # forward 2, backward to weights 2 x 2
        z = torch.nn.functional.pad(y, (0, 0, 0, 0, 0, 0 - 1))  # 3 channels for the next network
        (frozen(z).sum() + teacher(z).sum()).backward()  # each: forward 2, backward to input 2
        teacher(torch.randn(4, 3, 8, 8)).sum()           # built a graph, never differentiated: 4
    assert counter.calls == [("frozen", 2, False, False), ("trained", 2, True, True), ("frozen", 2, False, True),
                             ("teacher", 2, False, True), ("teacher", 4, False, False)]
    assert counter.cost.passes == 2 + (2 + 4) + (2 + 2) + (2 + 2) + 4
    assert counter.cost.teacher_passes == (2 + 2) + 4


def test_each_kind_of_iteration_is_measured_and_later_ones_are_charged_alike(monkeypatch) -> None:
    """A periodic pattern (a second network call every 3rd iteration, as a TTUR method's generator
    step) and a change of shape: the total equals the analytic count of every iteration, though
    only a few ran under the FLOP counter."""
    import sidbench.trainer.compute as compute

    runs = []

    class CountedMode(compute.FlopCounterMode):
        def __enter__(self):
            runs.append(1)
            return super().__enter__()

    monkeypatch.setattr(compute, "FlopCounterMode", CountedMode)
    net = conv_net()
    counter = ComputeCounter()
    counter.attach({"net": net})
    expected = 0
    for it in range(30):
        n = 2 if it < 15 else 3  # shapes change at iteration 15
        x = torch.randn(n, 3, 8, 8)
        with counter.iteration():
            with torch.no_grad():
                for _ in range(2 if it % 3 == 0 else 1):
                    net(x)
        expected += conv_forward_flops(n, 8, 8) * (2 if it % 3 == 0 else 1)
    counter.finish()
    assert counter.cost.flops == expected
    assert len(runs) <= 10, f"{len(runs)} of 30 iterations ran under the FLOP counter"


def test_counter_charges_nothing_outside_iterations_and_precompute() -> None:
    net = conv_net()
    counter = ComputeCounter()
    counter.attach({"net": net})
    net(torch.randn(3, 3, 8, 8))  # e.g. an evaluation's sampling: not training compute
    assert counter.cost.passes == 0 and counter.cost.flops == 0
    with counter.precompute():
        with torch.no_grad():
            net(torch.randn(3, 3, 8, 8))
    assert counter.cost.passes == 3 and counter.cost.flops == conv_forward_flops(3, 8, 8)


def test_a_nested_block_leaves_the_outer_one_counting() -> None:
    net = conv_net()
    counter = ComputeCounter(count_flops=False)
    counter.attach({"net": net})
    with torch.no_grad(), counter.iteration():
        with counter.precompute():
            net(torch.randn(2, 3, 8, 8))
        net(torch.randn(3, 3, 8, 8))  # after the inner block ended: still inside the iteration
    assert counter.cost.passes == 5
