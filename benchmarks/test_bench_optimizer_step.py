"""One optimiser step of the CIFAR-10 network (DDPM++, 55.7M parameters, random weights and
gradients, CPU, one thread) with each `trainer.optimizer_kernel` that changes it: Adam as built
(one tensor at a time on the CPU) and fused, RAdam for-each (as built, and what `fused` leaves it
on CUDA) and fused (its update made by Adam's fused kernel: `sidbench/trainer/fused_radam.py`; on
the CPU `compiled` is the same, and compiles RAdam's step only on CUDA).

    python -m pytest benchmarks/test_bench_optimizer_step.py -p no:xdist -o addopts="" --benchmark-enable -s
    python -m pytest benchmarks/test_bench_optimizer_step.py ... -k radam     # RAdam's two rows

Every optimiser is timed 1000 steps in (its step count set after a first step, as
`real_size.as_mid_run` does): RAdam skips its rectifier for its first 5 steps, which are cheaper.
Each row's first step (printed, and kept in `extra_info`) is not timed. Each row prints the
fastest of its rounds in CPU time. Nothing about time is asserted; docs/speed.md has the numbers.
"""
from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from sidbench.config import compose
from sidbench.teachers.networks import build_edm_network
from sidbench.trainer import speed

ROUNDS = 5
MID_RUN_STEP = 1000
ROWS = [("adam", "as_built"), ("adam", "fused"), ("radam", "foreach"), ("radam", "fused")]

pytestmark = pytest.mark.usefixtures("one_thread")  # benchmarks/conftest.py


@pytest.mark.parametrize(("optimizer", "kernel"), ROWS, ids=[f"{o}-{k}" for o, k in ROWS])
def test_step(benchmark: Any, optimizer: str, kernel: str) -> None:
    constructor = compose(["dataset=cifar10"]).dataset.teacher.constructor
    torch.manual_seed(0)
    net = build_edm_network(dict(constructor))
    for p in net.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.RAdam)(net.parameters(), lr=1e-4)
    speed.set_optimizer_kernel([opt], kernel)
    first = time.perf_counter()
    opt.step()  # the states exist
    first = time.perf_counter() - first
    for state in opt.state.values():
        state["step"].fill_(MID_RUN_STEP)
    cpu: list[float] = []

    def step() -> None:
        c0 = time.process_time()
        opt.step()
        cpu.append(time.process_time() - c0)

    benchmark.pedantic(step, rounds=1 if benchmark.disabled else ROUNDS, warmup_rounds=0)
    parameters = sum(p.numel() for p in net.parameters())
    benchmark.extra_info.update(parameters=parameters, step_ms=min(cpu) * 1e3, first_step_s=first)
    print(f"\n{optimizer} {kernel}: {min(cpu) * 1e3:.1f} ms a step of {parameters / 1e6:.1f}M parameters "
          f"(fastest of {len(cpu)}, CPU time); first step {first:.1f} s")
    assert all(torch.isfinite(p).all() for p in net.parameters())
