"""benchmarks/passes.py: the network calls of an iteration, recorded and replayed alone. Its count must
be the compute counter's (sidbench.trainer.compute, an independent implementation of the same rule)
for every kind of call an iteration makes, and its replay must make those calls again: the forwards,
the backwards into exactly the weights and inputs the iteration differentiated, and a JVP as a JVP."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from sidbench.trainer.compute import ComputeCounter, in_jvp

_spec = importlib.util.spec_from_file_location("passes", Path(__file__).parents[1] / "benchmarks" / "passes.py")
passes = importlib.util.module_from_spec(_spec)
sys.modules["passes"] = passes
_spec.loader.exec_module(passes)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 2, 3, padding=1))


def _networks() -> dict[str, nn.Module]:
    g, d, s, t = (_net(i) for i in range(4))
    d.requires_grad_(False)
    t.requires_grad_(False)
    return {"generator": g, "critic": d, "student": s, "teacher": t}


def _iteration(nets: dict[str, nn.Module]) -> None:
    """One of every kind of call: a trained network differentiated (G), a frozen one the generator's
    gradient passes through (D), a trained one inside a JVP without a graph (S, sCD's tangent), a
    frozen one without a graph (T), on batches of different sizes."""
    g, d, s, t = nets["generator"], nets["critic"], nets["student"], nets["teacher"]
    x = g(torch.randn(3, 2, 4, 4))
    d(x).square().mean().backward()
    with torch.no_grad():
        z = torch.randn(2, 2, 4, 4)
        torch.func.jvp(s, (z,), (torch.ones_like(z),))
        t(torch.randn(5, 2, 4, 4))


def test_the_count_is_the_compute_counters() -> None:
    nets = _networks()
    counter = ComputeCounter(count_flops=False)
    counter.attach(nets)
    with counter.iteration():
        recorded = passes.record_passes(nets, lambda: _iteration(nets))
    # by hand: G 3 images x (1 + 2), D 3 x (1 + 1), S's JVP 2 x 2, T 5 x 1
    assert passes.passes_per_image(recorded) == counter.take().passes == 9 + 6 + 4 + 5
    assert [(p.name, p.jvp, p.backward[0]) for p in recorded] == [
        ("generator", False, True), ("critic", False, True), ("student", True, False), ("teacher", False, False)]


def test_the_replay_makes_the_same_calls_again() -> None:
    nets = _networks()
    recorded = passes.record_passes(nets, lambda: _iteration(nets))
    for net in nets.values():
        for p in net.parameters():
            p.grad = None
    seen: list[tuple[str, bool, tuple[int, ...]]] = []
    hooks = [net.register_forward_hook(lambda m, a, o, name=name: seen.append((name, in_jvp(), tuple(a[0].shape))))
             for name, net in nets.items()]
    counter = ComputeCounter(count_flops=False)
    counter.attach(nets)
    with counter.iteration():
        passes.replay(recorded)
    for h in hooks:
        h.remove()
    assert seen == [("generator", False, (3, 2, 4, 4)), ("critic", False, (3, 2, 4, 4)), ("student", True, (2, 2, 4, 4)),
                    ("teacher", False, (5, 2, 4, 4))]
    assert counter.take().passes == passes.passes_per_image(recorded)  # the replay costs what was recorded
    assert all(p.grad is not None for p in nets["generator"].parameters())
    assert all(p.grad is None for name in ("critic", "student", "teacher") for p in nets[name].parameters())
    assert all(p.requires_grad for p in nets["student"].parameters())  # modes are restored after each call
