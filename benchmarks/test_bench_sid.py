"""What the trainer adds to SiD's networks: one SiD iteration on the CIFAR-10 SongUNet (DDPM++,
56M parameters, random weights, batch 2, CPU, float32, one thread), and the same iteration's
network passes timed alone in the same run.

    python -m pytest benchmarks/test_bench_sid.py -n 0 --benchmark-enable   # timings, 3-6 min
    python -m pytest benchmarks/test_bench_sid.py -n 0                      # (disabled) one call each

The second test reports ``ratio = iteration / passes`` (target <= 1.15: the trainer adds little
beyond the networks) in ``benchmark.extra_info`` and prints it. Nothing about time is asserted.
The ratio is taken on the process's CPU time (fastest round of each), which other jobs on shared
cores barely move; the wall-time ratios are reported beside it. pytest-benchmark's own table is
wall time (``--benchmark-timer time.process_time`` makes it CPU time).

What counts as "network passes" (test_network_passes): exactly the calls SiD makes, on tensors of
the same shapes, with the same train/eval modes (dropout on where SiD has it on):
  1. G forward without a graph; the fake score forward (with augmentation labels) and its backward
     into the fake score's weights;
  2. G forward with a graph; teacher and fake score forward; the backward of a scalar through both
     score networks into x_g and G's weights.
``backward(inputs=...)`` restricts weight gradients to the updated network (autograd then skips the
frozen networks' weight-gradient convolutions, as SiD's requires_grad toggling does). The only glue
kept is clearing that network's ``.grad`` first (as ``zero_grad(set_to_none=True)`` does), so the
gradient buffers, and the memory, are the iteration's. Left out, i.e. counted as trainer overhead:
label and noise sampling, the augmentation pipe, the losses and their bookkeeping, requires_grad
toggling, per-micro-batch seeding, gradient sanitising and the Adam steps. The Adam steps are also
timed on their own, and ``ratio_counting_adam_as_network`` = iteration / (passes + both Adam steps).

Memory: the peak resident set size (RSS) during each call, with the kernel's high-water mark reset
just before it (``/proc/self/clear_refs``; elsewhere the process's lifetime peak is reported), in
absolute terms and above the RSS at the call's start. Freed memory that the C allocator keeps is
already in the starting RSS, so the absolute peak is the figure to compare.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.config import compose
from sidbench.diffusion import edm_training_sigma
from sidbench.methods import METHODS
from sidbench.methods.sid.loss import generator_sigma
from sidbench.teachers.networks import build_edm_network
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext

BATCH = 2
ROUNDS = 3
WARMUP_ROUNDS = 1
RATIO_TARGET = 1.15
MiB = 2**20


# -- peak memory ---------------------------------------------------------------------------------
def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    hwm = _proc_status_bytes("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Calls:
    """Wall and CPU times and RSS figures of every call of a benchmarked function, warm-up included."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_start: list[int] = field(default_factory=list)
    rss_peak: list[int] = field(default_factory=list)
    peak_was_reset: bool = True

    def wrap(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            self.peak_was_reset &= _reset_peak_rss()
            self.rss_start.append(_proc_status_bytes("VmRSS") or 0)
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            self.cpu.append(time.process_time() - c0)
            self.wall.append(time.perf_counter() - w0)
            self.rss_peak.append(_peak_rss())
            return out

        return call

    def measured(self, benchmark: Any) -> slice:
        """The timed rounds: all but the warm-up when benchmarking, the single call when disabled."""
        return slice(0, 1) if benchmark.disabled else slice(WARMUP_ROUNDS, WARMUP_ROUNDS + ROUNDS)

    def summary(self, benchmark: Any) -> dict[str, Any]:
        s = self.measured(benchmark)
        wall, cpu, start, peak = self.wall[s], self.cpu[s], self.rss_start[s], self.rss_peak[s]
        return {
            "cpu_seconds_min": min(cpu),
            "cpu_seconds_mean": mean(cpu),
            "wall_seconds_min": min(wall),
            "wall_seconds_mean": mean(wall),
            # every call, warm-up first when benchmarking
            "cpu_seconds_all": [round(t, 3) for t in self.cpu],
            "wall_seconds_all": [round(t, 3) for t in self.wall],
            "peak_rss_mib": round(max(peak) / MiB, 1),
            "peak_rss_above_start_mib": round(max(p - r for p, r in zip(peak, start)) / MiB, 1),
            "peak_rss_is_per_call": self.peak_was_reset,
        }


# -- the setup -----------------------------------------------------------------------------------
@dataclass
class Bench:
    sid: Any
    ctx: StepContext
    teacher: Teacher
    inputs: dict[str, torch.Tensor]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def _tensor_mib(tensors: list[torch.Tensor]) -> float:
    return round(sum(t.numel() * t.element_size() for t in tensors) / MiB, 1)


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # other jobs share the cores: one thread gives steadier numbers
    try:
        cfg = compose(["dataset=cifar10"])  # the published CIFAR-10 preset: dropout 0.13, augment p 0.12
        assert cfg.method.dropout == 0.13 and cfg.method.augment_p == 0.12
        constructor = OmegaConf.to_container(cfg.dataset.teacher.constructor, resolve=True)
        torch.manual_seed(0)
        net = build_edm_network(constructor).eval().requires_grad_(False)  # frozen, as load_teacher leaves it
        teacher = Teacher(net=net, constructor=constructor, source="random")
        device = torch.device("cpu")
        sid = METHODS.get("sid")(teacher, cfg.method, device, cfg)
        ctx = StepContext(sid.networks(), sid.optimizers(), device, batch=BATCH)
        # Fixed draws for the passes-alone run, from the same distributions as the iteration's.
        g = torch.Generator().manual_seed(1)
        shape = (BATCH, *teacher.shape)
        torch.manual_seed(1)
        inputs = {
            "z_fake": torch.randn(shape, generator=g), "n_fake": torch.randn(shape, generator=g),
            "sigma_fake": edm_training_sigma(BATCH, cfg.method.p_mean, cfg.method.p_std),
            "augment_labels": torch.randn(BATCH, constructor["augment_dim"], generator=g),
            "z_gen": torch.randn(shape, generator=g), "n_gen": torch.randn(shape, generator=g),
            "sigma_gen": generator_sigma(BATCH, cfg.method.t_max),
            "sigma_init": torch.full((BATCH,), float(cfg.method.sigma_init)),  # G's noise level
        }
        yield Bench(sid, ctx, teacher, inputs)
    finally:
        torch.set_num_threads(threads)


def _context(bench: Bench) -> dict[str, Any]:
    params = {k: sum(p.numel() for p in n.parameters()) for k, n in {**bench.sid.networks(), "teacher": bench.teacher.net}.items()}
    return {"batch": BATCH, "threads": torch.get_num_threads(), "num_params": params, "device": "cpu", "dtype": "float32"}


# -- benchmark 1: one full SiD iteration ------------------------------------------------------------
def test_sid_iteration(benchmark, bench: Bench) -> None:
    sid, ctx = bench.sid, bench.ctx
    calls = Calls()

    def iteration() -> dict[str, float]:
        ctx.iteration += 1  # the trainer's loop does this before each iteration
        return sid.train_step(ctx)

    load_before = os.getloadavg()
    logs = benchmark.pedantic(calls.wrap(iteration), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    load_after = os.getloadavg()

    assert set(logs) == {"fake_score", "generator"}
    assert all(p.grad is not None for p in sid.generator.parameters())
    assert all(p.grad is not None for p in sid.fake_score.parameters())
    assert all(p.grad is None for p in bench.teacher.net.parameters())

    result = calls.summary(benchmark)
    states = [v for opt in sid.optimizers().values() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    nets = [*sid.networks().values(), bench.teacher.net]
    result["persistent_tensors_mib"] = {
        "parameters": _tensor_mib([p for n in nets for p in n.parameters()]),
        "gradients": _tensor_mib([p.grad for n in nets for p in n.parameters() if p.grad is not None]),
        "adam_state": _tensor_mib(states),
    }
    result["loadavg_before"], result["loadavg_after"] = load_before, load_after
    result["benchmarks_disabled"] = benchmark.disabled
    bench.results["iteration"] = result
    benchmark.extra_info.update(_context(bench), **result)


# -- benchmark 2: the same iteration's network passes, alone ----------------------------------------
def test_network_passes(benchmark, bench: Bench, capsys: pytest.CaptureFixture) -> None:
    sid, teacher, x = bench.sid, bench.teacher.net, bench.inputs
    G, F = sid.generator, sid.fake_score
    s_init = float(sid.cfg.sigma_init)
    g_params, f_params = list(G.parameters()), list(F.parameters())
    phases: dict[str, list[float]] = {"fake_score_update": [], "generator_update": []}

    def passes() -> None:
        c0 = time.process_time()
        for p in f_params:
            p.grad = None
        G.eval()
        with torch.no_grad():
            x_g = G(x["z_fake"] * s_init, x["sigma_init"], None).float()
        F.train()
        denoised = F(x_g + x["sigma_fake"] * x["n_fake"], x["sigma_fake"].flatten(), None, augment_labels=x["augment_labels"])
        denoised.float().square().sum().backward(inputs=f_params)
        c1 = time.process_time()

        for p in g_params:
            p.grad = None
        G.train()
        F.eval()
        x_g = G(x["z_gen"] * s_init, x["sigma_init"], None).float()
        x_t = x_g + x["sigma_gen"] * x["n_gen"]
        y_real = teacher(x_t, x["sigma_gen"].flatten(), None).float()
        y_fake = F(x_t, x["sigma_gen"].flatten(), None).float()
        (y_real * y_fake).sum().backward(inputs=g_params)
        phases["fake_score_update"].append(c1 - c0)
        phases["generator_update"].append(time.process_time() - c1)

    calls = Calls()
    load_before = os.getloadavg()
    benchmark.pedantic(calls.wrap(passes), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    load_after = os.getloadavg()

    assert all(p.grad is not None for p in g_params) and all(p.grad is not None for p in f_params)
    assert all(p.grad is None for p in teacher.parameters())

    # Bottom-up cross-check, outside the benchmark's timing: the glue alone, on the gradients just
    # made. `ctx.update` with a loss function that only puts those gradients back (its own
    # zero_grad drops them) runs all of the trainer's work on one update and no network pass;
    # the augmentation pipe is the method's only glue of any size. The Adam steps also alone.
    def grads_back(params: list[torch.nn.Parameter]) -> Callable[[int], tuple[torch.Tensor, dict[str, float]]]:
        grads = [p.grad for p in params]

        def loss_fn(n: int) -> tuple[torch.Tensor, dict[str, float]]:
            for p, g in zip(params, grads):
                p.grad = g
            return torch.zeros((), requires_grad=True), {}

        return loss_fn

    glue_f, glue_g = grads_back(f_params), grads_back(g_params)
    x_aug = torch.randn(BATCH, *bench.teacher.shape)
    glue_cpu: list[float] = []
    adam_cpu: list[float] = []
    for _ in range(1 if benchmark.disabled else ROUNDS):
        c0 = time.process_time()
        sid.augment(x_aug)
        bench.ctx.update("fake_score", glue_f)
        bench.ctx.update("generator", glue_g)
        c1 = time.process_time()
        for opt in sid.optimizers().values():
            opt.step()
        adam_cpu.append(time.process_time() - c1)
        glue_cpu.append(c1 - c0)

    result = calls.summary(benchmark)
    s = calls.measured(benchmark)
    result.update({f"{k}_cpu_seconds_min": min(v[s]) for k, v in phases.items()})
    result["adam_steps_cpu_seconds_min"] = min(adam_cpu)
    result["glue_cpu_seconds_min"] = min(glue_cpu)
    passes_cpu = result["cpu_seconds_min"]
    result["ratio_bottom_up"] = round((passes_cpu + min(glue_cpu)) / passes_cpu, 4)
    result["ratio_bottom_up_counting_adam_as_network"] = round((passes_cpu + min(glue_cpu)) / (passes_cpu + min(adam_cpu)), 4)
    result["loadavg_before"], result["loadavg_after"] = load_before, load_after
    result["ratio_target"] = RATIO_TARGET
    it = bench.results.get("iteration")
    if it is None:  # run alone (-k): nothing to compare with
        result["ratio"] = None
        result["note"] = "run test_sid_iteration in the same session for the ratio"
    else:
        # CPU time of this (one-threaded) process: other jobs' time-slicing of the shared cores,
        # which swings wall times by tens of percent between minutes, mostly drops out of it.
        ratio = it["cpu_seconds_min"] / result["cpu_seconds_min"]
        result.update(
            ratio=round(ratio, 4),
            ratio_target_met=ratio <= RATIO_TARGET,
            ratio_cpu_of_means=round(it["cpu_seconds_mean"] / result["cpu_seconds_mean"], 4),
            ratio_counting_adam_as_network=round(it["cpu_seconds_min"] / (result["cpu_seconds_min"] + min(adam_cpu)), 4),
            ratio_wall=round(it["wall_seconds_min"] / result["wall_seconds_min"], 4),
            ratio_wall_of_means=round(it["wall_seconds_mean"] / result["wall_seconds_mean"], 4),
            iteration_cpu_seconds_min=it["cpu_seconds_min"],
            iteration_peak_rss_mib=it["peak_rss_mib"],
            trainer_overhead_cpu_seconds=round(it["cpu_seconds_min"] - result["cpu_seconds_min"], 3),
        )
        if benchmark.disabled:
            result["note"] = "benchmarks disabled: one cold call each, so the ratio includes first-call costs (e.g. Adam state creation)"
    benchmark.extra_info.update(_context(bench), **result)

    with capsys.disabled():
        r = result
        print()
        if it is not None:
            print(f"SiD iteration (CIFAR-10 SongUNet, batch {BATCH}, CPU, 1 thread): CPU min {it['cpu_seconds_min']:.2f} s, "
                  f"mean {it['cpu_seconds_mean']:.2f} s; wall min {it['wall_seconds_min']:.2f} s, mean {it['wall_seconds_mean']:.2f} s; "
                  f"peak RSS {it['peak_rss_mib']:.0f} MiB (+{it['peak_rss_above_start_mib']:.0f} MiB above the call's start); "
                  f"load {it['loadavg_before'][0]:.2f} -> {it['loadavg_after'][0]:.2f}")
        print(f"network passes alone: CPU min {r['cpu_seconds_min']:.2f} s, mean {r['cpu_seconds_mean']:.2f} s "
              f"(fake-score update {r['fake_score_update_cpu_seconds_min']:.2f} s, generator update "
              f"{r['generator_update_cpu_seconds_min']:.2f} s); wall min {r['wall_seconds_min']:.2f} s, mean {r['wall_seconds_mean']:.2f} s; "
              f"glue alone CPU {min(glue_cpu):.3f} s (Adam steps alone {min(adam_cpu):.3f} s); peak RSS {r['peak_rss_mib']:.0f} MiB; "
              f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
        if it is not None:
            print(f"ratio iteration / passes (CPU time, min) = {r['ratio']:.3f}; of means {r['ratio_cpu_of_means']:.3f}; "
                  f"Adam counted as network work {r['ratio_counting_adam_as_network']:.3f}; wall {r['ratio_wall']:.3f} "
                  f"(of means {r['ratio_wall_of_means']:.3f}); bottom-up (passes + glue) / passes {r['ratio_bottom_up']:.3f}; target <= {RATIO_TARGET}: {'met' if r['ratio_target_met'] else 'NOT met'}"
                  + (" [benchmarks disabled: single cold calls]" if benchmark.disabled else ""))
