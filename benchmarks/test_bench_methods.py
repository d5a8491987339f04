"""Every built-in method's real iteration at the CIFAR-10 and FFHQ 64 configurations (random weights,
the preset's network and settings, micro-batch 2, CPU, float32, one thread): seconds per iteration,
images per second, peak memory, and the ratio of the iteration's time to its network passes timed
alone in the same run (benchmarks/passes.py); for SiD also the official SiD iteration's time over
sidbench's, when a checkout of the authors' code is named by SID_REFERENCE. One more row,
`test_digits_default_iteration`, times the main job's own iteration (`sidbench run`: the shipped
digits teacher, its preset, one process's micro-batch of 128): how fast this CPU runs the main job.

    SID_REFERENCE=/path/to/SiD python -m pytest benchmarks/test_bench_methods.py -p no:xdist -o addopts="" \\
        --benchmark-enable --benchmark-save=cpu -k "sid and cifar10"      # one row, a few minutes
    python -m pytest benchmarks/test_bench_methods.py -p no:xdist -o addopts="" -s --benchmark-enable -k digits  # 15 s
    python -m pytest benchmarks/test_bench_methods.py ... --benchmark-enable --benchmark-compare=0002   # against saved run 0002
    python -m pytest benchmarks/test_bench_methods.py ... --benchmark-enable --benchmark-compare-fail=min:10%
    BENCH_SET="trainer.optimizer_kernel=as_built" python -m pytest benchmarks/test_bench_methods.py ...  # every row with these overrides
    BENCH_ROUNDS=10 python -m pytest benchmarks/test_bench_methods.py ... -k "dmd2 and cifar10"        # more rounds (default 3)

docs/speed.md says how the saved baseline is used. Each round runs the passes alone (pytest-benchmark's
untimed `setup`, timed here) and then the iteration (timed by pytest-benchmark), so the two alternate
and share the machine's load. The ratio uses the process's CPU time (fastest round of each), which
other jobs on shared cores barely move. Targets (docs/speed.md): iteration / passes <= 1.05, and
official / sidbench >= 1.25, on the CPU at micro-batch 2. Nothing about time is asserted.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import passes as passes_mod  # noqa: E402
import real_size  # noqa: E402

BATCH = 2
#: rounds of (passes alone, iteration) per row; more steady the short iterations' ratios (DMD2's)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
METHOD_ROWS = [m for m in real_size.default_methods() if m not in real_size.VARIANTS]  # every distinct iteration
DATASETS = ["cifar10", "ffhq64"]
RATIO_TARGET = 1.05
#: `sidbench run` overrides added to every row (space-separated), e.g. a speed option to compare
EXTRA = os.environ.get("BENCH_SET", "").split()
OFFICIAL_TARGET = 1.25


pytestmark = pytest.mark.usefixtures("one_thread")  # benchmarks/conftest.py


def cpu_timed(run: Callable[[], Any], times: list[float]) -> Callable[[], None]:
    """`run`, appending the process CPU time of each call to `times` (other jobs on shared cores
    move it less than wall time)."""
    def timed() -> None:
        c0 = time.process_time()
        run()
        times.append(time.process_time() - c0)

    return timed


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHOD_ROWS)
def test_iteration(benchmark: Any, method: str, dataset: str, tmp_path: Path) -> None:
    device = torch.device("cpu")
    images = tmp_path / "images"
    images.mkdir()
    with real_size.scratch_folder():
        cfg, overrides, notes = real_size.compose_row(method, dataset, device, BATCH, images, extra=EXTRA)
        teacher = real_size.random_teacher(cfg, device)
        trainer, stage = real_size.make_trainer(cfg, teacher, device, tmp_path / "run")
        iteration = real_size.stepper(trainer, BATCH)
        iteration()  # Adam's states exist; the compute counter has measured this kind
        real_size.as_mid_run(trainer)
        recorded = passes_mod.record_passes(passes_mod.method_networks(trainer.method), iteration)
        passes_cpu: list[float] = []
        iteration_cpu: list[float] = []
        passes_alone = cpu_timed(lambda: passes_mod.replay(recorded, trainer.ctx.autocast), passes_cpu)
        timed_iteration = cpu_timed(iteration, iteration_cpu)

        real_size.reset_peak(device)
        rounds = 1 if benchmark.disabled else ROUNDS
        benchmark.pedantic(timed_iteration, setup=passes_alone, rounds=rounds, warmup_rounds=0)
        peak, _ = real_size.read_peak(device)
        trainer.counter.detach()

    ratio = min(iteration_cpu) / min(passes_cpu)
    info: dict[str, Any] = {
        "method": method, "dataset": dataset, "stage": stage, "batch": BATCH, "threads": 1, "overrides": overrides, "notes": notes,
        "seconds_per_iteration_cpu_min": min(iteration_cpu), "passes_seconds_cpu_min": min(passes_cpu),
        "images_per_second": BATCH / min(iteration_cpu), "peak_rss_gib": round(peak, 3),
        "passes_per_iteration": passes_mod.passes_per_image(recorded),
        "ratio_iteration_over_passes": round(ratio, 4), "ratio_target": RATIO_TARGET, "ratio_target_met": ratio <= RATIO_TARGET,
        "loadavg": os.getloadavg(),
    }
    reference = os.environ.get("SID_REFERENCE")
    if method == "sid" and dataset == "cifar10" and reference:
        import side_by_side

        sbs = side_by_side.measure(Path(reference), dataset, BATCH, rounds=rounds, warmup=1)
        info.update(official_over_sidbench=round(sbs["official_over_sidbench"], 4), official_target=OFFICIAL_TARGET,
                    official_side_by_side=sbs)
    benchmark.extra_info.update(info)
    print(f"\n{method} {dataset}: {min(iteration_cpu):.2f} s/iteration (CPU), passes alone {min(passes_cpu):.2f} s, "
          f"ratio {ratio:.3f} (target <= {RATIO_TARGET}), peak RSS {peak:.2f} GiB"
          + (f", official / sidbench {info['official_over_sidbench']:.3f}" if "official_over_sidbench" in info else ""))


#: the main job's share of an iteration on one of its two processes (preset/sid_digits.yaml: batch
#: 256 over `processes: 2`, one thread each)
DIGITS_PROCESSES = 2


def test_digits_default_iteration(benchmark: Any, tmp_path: Path) -> None:
    """The main job's iteration (`sidbench run`: SiD, the shipped digits teacher, its preset) at one
    process's micro-batch, one thread: its time against its passes alone, and the seconds per kimg
    two such processes would take side by side. The convolutions are most of it, so the CPU's vector
    width sets the pace (`cpu_capability`: a 2-core AVX-512 AMD EPYC ran the main job at about 1.1
    s/kimg, an AVX2-only one at 1.7-2.3, docs/speed.md)."""
    from sidbench.config import compose
    from sidbench.teachers.load import load_teacher

    device = torch.device("cpu")
    preset = compose(["method=sid", "dataset=digits"])
    micro = int(preset.trainer.batch) // DIGITS_PROCESSES
    assert int(preset.processes) == DIGITS_PROCESSES, "the preset's process count changed: update DIGITS_PROCESSES"
    with real_size.scratch_folder():
        cfg, overrides, _ = real_size.compose_row("sid", "digits", device, micro, tmp_path, extra=EXTRA)
        teacher = load_teacher(cfg.dataset.teacher, device)  # the shipped weights, as the run loads them
        trainer, _ = real_size.make_trainer(cfg, teacher, device, tmp_path / "run")
        iteration = real_size.stepper(trainer, micro)
        for _ in range(3):  # Adam's states exist; the compute counter has measured this kind; caches warm
            iteration()
        recorded = passes_mod.record_passes(passes_mod.method_networks(trainer.method), iteration)
        passes_cpu: list[float] = []
        iteration_cpu: list[float] = []
        passes_alone = cpu_timed(lambda: passes_mod.replay(recorded, trainer.ctx.autocast), passes_cpu)
        timed_iteration = cpu_timed(iteration, iteration_cpu)

        rounds = 1 if benchmark.disabled else max(ROUNDS, 15)  # short rounds: more of them steady the ratio
        benchmark.pedantic(timed_iteration, setup=passes_alone, rounds=rounds, warmup_rounds=0)
        trainer.counter.detach()

    ratio = min(iteration_cpu) / min(passes_cpu)
    sec_per_kimg = min(iteration_cpu) * 1000 / (micro * DIGITS_PROCESSES)
    info: dict[str, Any] = {
        "method": "sid", "dataset": "digits", "batch": micro, "processes": DIGITS_PROCESSES, "threads": 1,
        "overrides": overrides, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "seconds_per_iteration_cpu_min": min(iteration_cpu), "passes_seconds_cpu_min": min(passes_cpu),
        "ratio_iteration_over_passes": round(ratio, 4), "ratio_target": RATIO_TARGET, "ratio_target_met": ratio <= RATIO_TARGET,
        "seconds_per_kimg_two_processes": round(sec_per_kimg, 3), "loadavg": os.getloadavg(),
    }
    benchmark.extra_info.update(info)
    assert len(recorded) > 0 and min(passes_cpu) > 0
    print(f"\nsid digits (the main job, micro-batch {micro}): {1e3 * min(iteration_cpu):.0f} ms/iteration (CPU), passes "
          f"alone {1e3 * min(passes_cpu):.0f} ms, ratio {ratio:.3f} (target <= {RATIO_TARGET}), about {sec_per_kimg:.2f} "
          f"s/kimg on {DIGITS_PROCESSES} processes ({info['cpu_capability']})")
