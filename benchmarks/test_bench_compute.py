"""What counting compute costs: one SiD iteration of the digits default (the shipped teacher, batch
64, one thread, CPU), with the compute counter attached (in its steady state: hooks on every
network call, FLOPs charged from the measured kind) and with no counter, interleaved in one run.

    python -m pytest benchmarks/test_bench_compute.py -n 0 --benchmark-enable

Reports ``overhead = counted / uncounted - 1`` (target < 1%) on the fastest round's process CPU
time, and the one-off cost of an iteration measured under torch's FlopCounterMode (paid once per
kind of iteration). The digits networks are the worst case: an 8x8 network's call is cheapest,
so a hook's fixed cost weighs most. Nothing about time is asserted.
"""
from __future__ import annotations

import time

import pytest
import torch

from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher
from sidbench.trainer.compute import ComputeCounter
from sidbench.trainer.context import StepContext

BATCH = 64
ROUNDS = 15
TARGET = 0.01


def _setup(counted: bool):  # noqa: ANN202
    cfg = compose([])
    device = torch.device("cpu")
    sid = METHODS.get("sid")(load_teacher(cfg.dataset.teacher, device), cfg.method, device, cfg)
    counter = ComputeCounter()
    if counted:
        counter.attach({**sid.frozen_networks(), **sid.networks()})
    return sid, counter, StepContext(sid.networks(), sid.optimizers(), device, batch=BATCH, counter=counter)


@pytest.mark.usefixtures("one_thread")  # benchmarks/conftest.py
def test_counting_overhead(benchmark) -> None:  # noqa: ANN001
    runs = {"counted": _setup(True), "uncounted": _setup(False)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    first: list[float] = []
    for r in range(ROUNDS + 2):
        for name, (sid, counter, ctx) in runs.items():
            ctx.iteration = r
            t = time.process_time()
            with counter.iteration():
                sid.train_step(ctx)
            elapsed = time.process_time() - t
            if r < 2:  # the first two iterations run under the FLOP counter (their kind is new)
                first.append(elapsed) if name == "counted" else None
            else:
                times[name].append(elapsed)
    counted, uncounted = min(times["counted"]), min(times["uncounted"])
    result = {"counted_s": counted, "uncounted_s": uncounted, "overhead": counted / uncounted - 1,
              "target": TARGET, "measured_iteration_s": max(first), "flops_per_iteration": runs["counted"][1].cost.flops / (ROUNDS + 2)}
    benchmark.extra_info.update(result)
    print(result)
    assert runs["counted"][1].cost.passes == (ROUNDS + 2) * 11 * BATCH  # the counter did count
    benchmark.pedantic(lambda: None, rounds=1)
