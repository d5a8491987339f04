"""What the live progress bar costs a CPU run: SiD iterations of the digits default (the shipped
teacher, batch 64, one thread) with the bar updated after each, drawn to a pseudo-terminal
(drained by `cat`, as a terminal emulator drains a real one), against the same iterations with no bar, interleaved in one run.

    python -m pytest benchmarks/test_bench_display.py -n 0 -o addopts="" --benchmark-enable

Reports `overhead = with bar / without - 1` on the fastest round's wall time (target < 2%). The
bar's redraws happen in the training thread, at most once per `refresh_every_s`; rich's own refresh
thread (10 redraws a second, each taking the GIL from training) is the row `rich_refresh_thread`,
for comparison. Wall time, because a thread that takes the GIL
delays the training thread without adding to its CPU time. Nothing about time is asserted.
"""
from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest
import torch
from rich.console import Console

from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher
from sidbench.trainer.budget import Budget
from sidbench.trainer.context import StepContext
from sidbench.trainer.progress import Progress, ProgressDisplay

BATCH = 64
ITERATIONS = 15  # about 3 s a round: many refresh intervals
ROUNDS = 5
TARGET = 0.02


def _display(refresh_thread: bool, terminal: Any) -> ProgressDisplay:
    console = Console(file=terminal, width=120, force_terminal=True, color_system=None)
    display = ProgressDisplay(Budget("kimg", 1000.0), console=console, refresh_every_s=1.0)
    if refresh_thread:  # rich's default, as the bar was built before
        display._bar.live.auto_refresh = True  # noqa: SLF001
    return display


@pytest.mark.usefixtures("one_thread")  # benchmarks/conftest.py
def test_progress_bar_overhead(benchmark) -> None:  # noqa: ANN001
    cfg = compose([])
    device = torch.device("cpu")
    sid = METHODS.get("sid")(load_teacher(cfg.dataset.teacher, device), cfg.method, device, cfg)
    ctx = StepContext(sid.networks(), sid.optimizers(), device, batch=BATCH)
    sid.train_step(ctx)  # Adam's states exist

    def run(display: ProgressDisplay | None) -> float:
        t0 = time.perf_counter()
        if display is None:
            for i in range(ITERATIONS):
                ctx.iteration = i
                sid.train_step(ctx)
            return time.perf_counter() - t0
        with display:
            threaded = display._bar.live._refresh_thread is not None  # noqa: SLF001
            assert threaded == display._bar.live.auto_refresh  # noqa: SLF001 - the row is what it says
            for i in range(ITERATIONS):
                ctx.iteration = i
                sid.train_step(ctx)
                display.update(Progress(images_seen=(i + 1) * BATCH, seconds=time.perf_counter() - t0), {"fake_score": 1.0})
        return time.perf_counter() - t0

    # a pseudo-terminal drained by another process, as a terminal emulator drains a real one
    master, slave = os.openpty()
    drain = subprocess.Popen(["cat"], stdin=master, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    terminal = os.fdopen(slave, "w")
    times: dict[str, list[float]] = {"none": [], "bar": [], "rich_refresh_thread": []}
    try:
        rows = [("none", lambda: None), ("bar", lambda: _display(False, terminal)),
                ("rich_refresh_thread", lambda: _display(True, terminal))]
        for r in range(ROUNDS):  # the order rotates, so no row always runs first
            for name, make in rows[r % 3:] + rows[:r % 3]:
                times[name].append(run(make()))
    finally:
        terminal.close()
        drain.kill()
        drain.wait()
        os.close(master)
    base = min(times["none"])
    result = {"seconds_without": base, "overhead": min(times["bar"]) / base - 1,
              "overhead_rich_refresh_thread": min(times["rich_refresh_thread"]) / base - 1, "target": TARGET}
    benchmark.extra_info.update(result)
    print(result)
    benchmark.pedantic(lambda: None, rounds=1)
