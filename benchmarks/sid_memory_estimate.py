"""Per-process memory of one SiD iteration at each published configuration: an estimate made on the
CPU, for when no GPU is at hand (the table is in benchmarks/MEMORY.md).

    python benchmarks/sid_memory_estimate.py                  # the table (3-4 min on 2 cores)
    python benchmarks/sid_memory_estimate.py --linearity      # also check linearity in the micro-batch
    python benchmarks/sid_memory_estimate.py --check cifar10  # also a real CPU run at batch 1 vs. its trace

How it measures. The iteration is sidbench's own: the SiD method and the trainer's StepContext (each
network's update, zero_grad(set_to_none=True), micro-batch backward, nan_to_num, Adam), with the
preset's `trainer.batch_gpu` as the micro-batch and its `trainer.precision` as autocast. It runs
under PyTorch's FakeTensorMode: every tensor has its real shape, dtype and lifetime but no data and
no compute, so even the 296M-parameter ImageNet network traces at the full micro-batch in about a
minute, and nothing is extrapolated to batch_gpu (the trace at micro-batch 1 gives the per-sample
slope for other micro-batches; `--linearity` shows that traces at 1 and 2, extrapolated, match the
trace at batch_gpu). A dispatch mode
A dispatch mode
counts the bytes of every storage created during the iteration while it is alive, so the peak is
that of the tensors the code keeps: weights' gradients, Adam's states, the activations autograd
saves, and temporaries. `--check` runs the same counter on real tensors (real compute) and shows
that it agrees with the trace.

The traced iteration starts from the state between two iterations: Adam's states and both
networks' gradients exist (steady state). Where CPU and CUDA keep different tensors (CUDA autocast
runs GroupNorm in float32; CUDA's fused dropout keeps a bool mask) the trace does what CUDA does
(`cuda_like`). The weights of the teacher, G, the fake score and G's EMA
are added from the parameter count; DDP's gradient buckets (one more copy of G's and the fake
score's gradients, `gradient_as_bucket_view=False`) only in the multi-GPU column.

Not in the estimate (see MEMORY.md): the CUDA context, the caching allocator's rounding and
fragmentation, cuDNN workspaces, and rank 0's evaluation (the Inception network; the generator's
sampling at eval.batch_size, reported in its own column). Augmentation (the fake score's inputs,
no graph, a few image-sized buffers) is left off: it draws data-dependent index sets that a trace
without data cannot follow.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CONFIGS = ["cifar10", "cifar10-cond", "ffhq64", "afhqv2-64", "imagenet64"]
GIB = 2**30
MIB = 2**20


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created while active and still alive; their peak since `reset_peak`.

    Storages are counted once however many views share them (outputs that alias an input count
    nothing), and dropped when Python releases them (a storage keeps its Python object for its
    whole life, so a weakref finaliser sees the free).
    Storages created before entering (the weights) are not counted.

    Under a fake mode two data-dependent operations get a stand-in: reading a tensor's value
    (`.item()`, `float(t)`: only logging and a NaN count use it here) returns a constant, and a
    boolean mask index (SiD's "drop samples with a NaN") keeps every sample: the no-NaN steady state.
    """

    def __init__(self, fake: bool) -> None:
        super().__init__()
        self.fake = fake
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}

    def reset_peak(self) -> None:
        self.peak = self.current

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        n = storage.nbytes()
        self._live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)

        def release(key: int = key, n: int = n) -> None:
            if self._live.pop(key, None) is not None:
                self.current -= n

        weakref.finalize(storage, release)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.fake and func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return True if dtype == torch.bool else (0 if not dtype.is_floating_point else 1.0)
        if self.fake and func is torch.ops.aten.index.Tensor:
            indices = list(args[1])
            for i, ix in enumerate(indices):
                if isinstance(ix, torch.Tensor) and ix.dtype == torch.bool:
                    indices[i] = torch.arange(ix.numel(), device=ix.device).reshape(ix.shape)
            args = (args[0], indices)
        # An output that shares an input's storage (a view, an in-place or out= result, e.g. Adam's
        # update of the weights) allocated nothing.
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in inputs:
                self._track(t)
        return out


@contextlib.contextmanager
def cuda_like() -> Iterator[None]:
    """Make the CPU keep what CUDA keeps, where the two differ for these networks:
    - autocast: CUDA runs group_norm in float32 (it is on CUDA autocast's float32 list), so the
      normalised maps and what follows them up to the next convolution (SiLU, dropout) are float32;
      CPU autocast runs group_norm in the half-precision dtype of its input;
    - dropout: CUDA uses the fused kernel (`native_dropout`), which keeps a bool mask for backward;
      the CPU path keeps a noise tensor of the input's dtype (2-4x the bytes).
    Patched for the duration of the trace only; the networks' code is otherwise untouched.
    """
    from sidbench.teachers.networks import layers

    group_norm, dropout = layers.GroupNorm.forward, F.dropout

    def group_norm_fp32(self: Any, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled("cpu"):
            return group_norm(self, x)
        with torch.autocast("cpu", enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)

    def fused_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        return torch.native_dropout(x, p, True)[0] if training and p > 0 else x

    layers.GroupNorm.forward, F.dropout = group_norm_fp32, fused_dropout
    try:
        yield
    finally:
        layers.GroupNorm.forward, F.dropout = group_norm, dropout


@dataclass
class Trace:
    dataset: str
    params: int             # parameters of one network (teacher = G = fake score)
    batch_gpu: int
    precision: str
    persistent: int         # bytes alive between iterations (gradients, Adam states)
    peak: dict[int, int]    # micro-batch -> peak bytes during one steady-state iteration (persistent included)
    sample_peak: int        # G's sampling at eval.batch_size, no graph (bytes above the weights)
    eval_batch: int
    seconds: float


class _FakeTeacher:
    """Teacher.copy_network without its `.to(device)`, which cannot swap fake parameters (the
    copies are on the CPU already)."""

    def __new__(cls, **kwargs: Any) -> Any:
        from sidbench.teachers.networks import build_edm_network
        from sidbench.teachers.teacher import Teacher

        class FakeTeacher(Teacher):
            def copy_network(self, **overrides: Any) -> torch.nn.Module:
                net = build_edm_network({**self.constructor, **overrides})
                net.load_state_dict(self.net.state_dict(), strict=True)
                return net.train().requires_grad_(True)

        return FakeTeacher(**kwargs)


def setup(dataset: str, batch: int, fake_mode: FakeTensorMode | None) -> tuple[Any, Any, Any, Any]:
    """SiD with random weights for a dataset's published setting; the step context at `batch`."""
    from sidbench.config import compose
    from sidbench.methods import METHODS
    from sidbench.teachers.networks import build_edm_network
    from sidbench.teachers.teacher import Teacher
    from sidbench.trainer.context import StepContext

    cfg = compose([f"dataset={dataset}", "method.augment_p=0"])
    constructor = dict(cfg.dataset.teacher.constructor)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    with fake_mode if fake_mode is not None else torch.device("cpu"):
        net = build_edm_network(constructor).eval().requires_grad_(False)
        teacher = (_FakeTeacher if fake_mode is not None else Teacher)(net=net, constructor=constructor, source="random")
        sid = METHODS.get("sid")(teacher, cfg.method, cpu, cfg)
    labels = None
    if teacher.label_dim:
        def labels(n: int) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.arange(n) % teacher.label_dim, teacher.label_dim).float()
    ctx = StepContext(sid.networks(), sid.optimizers(), cpu, batch=batch, batch_gpu=batch,
                      precision=str(cfg.trainer.precision), label_sampler=labels)
    return cfg, teacher, sid, ctx


def trace(dataset: str, batches: list[int], fake: bool = True) -> tuple[int, dict[int, int], int, Any]:
    """(persistent bytes, {micro-batch: peak bytes of a steady-state iteration}, params, cfg)."""
    peaks: dict[int, int] = {}
    persistent = params = 0
    cfg = None
    for b in batches:
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        cfg, teacher, sid, ctx = setup(dataset, b, fake_mode)
        params = sum(p.numel() for p in teacher.net.parameters())
        counter = LiveBytes(fake)
        with fake_mode if fake_mode is not None else torch.device("cpu"), counter, cuda_like():
            # The state between two iterations: both networks' gradients and Adam's states (an
            # Adam step on zero gradients creates the states and leaves the weights as they are).
            for name, net in sid.networks().items():
                for p in net.parameters():
                    p.grad = torch.zeros_like(p)
                sid.optimizers()[name].step()
            persistent = counter.current
            counter.reset_peak()
            ctx.iteration = 1
            sid.train_step(ctx)
        peaks[b] = counter.peak
        del sid, teacher, ctx, counter
    return persistent, peaks, params, cfg


def sampling_peak(dataset: str, n: int) -> int:
    """Bytes above the weights while the EMA generator makes `n` images without a graph."""
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    cfg, teacher, sid, ctx = setup(dataset, 1, fake_mode)
    counter = LiveBytes(True)
    with fake_mode, counter, cuda_like():
        ema = copy.deepcopy(sid.generator).eval()
        counter.reset_peak()
        base = counter.current
        with torch.no_grad(), ctx.autocast():
            z = torch.randn(n, *teacher.shape)
            sid.sample(ema, z, ctx.labels(n))
    return counter.peak - base


def config_key(dataset: str) -> str:
    """What the memory depends on: the network, dropout, micro-batch, precision, eval batch (two
    datasets with the same key, e.g. ffhq64 and afhqv2-64, share one trace)."""
    from omegaconf import OmegaConf

    from sidbench.config import compose

    cfg = compose([f"dataset={dataset}"])
    return OmegaConf.to_yaml({"net": cfg.dataset.teacher.constructor, "dropout": cfg.method.dropout,
                              "batch_gpu": cfg.trainer.batch_gpu or cfg.trainer.batch, "precision": cfg.trainer.precision,
                              "eval_batch": cfg.eval.batch_size})


def estimate(dataset: str, linearity: bool = False) -> Trace:
    """Traces at micro-batch 1 and batch_gpu (and 2 with `linearity`) plus the sampling peak."""
    start = time.perf_counter()
    from sidbench.config import compose

    cfg = compose([f"dataset={dataset}"])
    batch_gpu = int(cfg.trainer.batch_gpu or cfg.trainer.batch)
    persistent, peaks, params, _ = trace(dataset, sorted({1, batch_gpu} | ({2} if linearity else set())))
    sample = sampling_peak(dataset, int(cfg.eval.batch_size))
    return Trace(dataset, params, batch_gpu, str(cfg.trainer.precision), persistent, peaks, sample,
                 int(cfg.eval.batch_size), time.perf_counter() - start)


#: Cards for the "largest batch_gpu" column, in GiB, and what is kept back on each for the CUDA
#: context, cuDNN workspaces and the caching allocator's fragmentation (not in the trace).
CARDS = (24, 40, 80)
RESERVE_GIB, RESERVE_FRACTION = 1.0, 0.10


def largest_batch(fixed: float, per_sample: float, card_gib: float) -> int:
    budget = (card_gib - RESERVE_GIB) * (1 - RESERVE_FRACTION) * GIB - fixed
    return max(0, int(budget // per_sample)) if per_sample > 0 else 0


def table(rows: list[Trace]) -> str:
    head = ("| dataset | network (params) | precision | batch_gpu | weights: teacher, G, fake score, EMA | grads + Adam (G, fake score) "
            "| activations per sample | activations at batch_gpu | **total at batch_gpu, 1 GPU** | **total with DDP** "
            f"| largest batch_gpu with DDP on {' / '.join(f'{c}' for c in CARDS)} GiB | EMA sampling at eval.batch_size |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        from sidbench.config import compose

        net = compose([f"dataset={r.dataset}"]).dataset.teacher.constructor.model_type
        weights = 4 * 4 * r.params  # teacher, G, fake score, EMA in float32
        act = {b: p - r.persistent for b, p in r.peak.items()}
        slope = (act[r.batch_gpu] - act[1]) / max(r.batch_gpu - 1, 1)
        total = weights + r.peak[r.batch_gpu]
        ddp = total + 2 * 4 * r.params
        fixed = ddp - act[r.batch_gpu] + (act[1] - slope)  # everything but the per-sample part
        fits = " / ".join(str(largest_batch(fixed, slope, c)) for c in CARDS)
        lines.append(
            f"| {r.dataset} | {net} ({r.params / 1e6:.1f}M) | {r.precision} | {r.batch_gpu} | {weights / GIB:.2f} GiB "
            f"| {r.persistent / GIB:.2f} GiB | {slope / MIB:.0f} MiB | {act[r.batch_gpu] / GIB:.2f} GiB "
            f"| **{total / GIB:.1f} GiB** | **{ddp / GIB:.1f} GiB** | {fits} | {r.sample_peak / GIB:.1f} GiB (batch {r.eval_batch}) |"
        )
        if 2 in act:
            extrap = act[1] + (r.batch_gpu - 1) * (act[2] - act[1])
            print(f"{r.dataset}: activations at batch_gpu {act[r.batch_gpu] / GIB:.3f} GiB traced, "
                  f"{extrap / GIB:.3f} GiB extrapolated from micro-batches 1 and 2", file=sys.stderr)
    return "\n".join(lines)


def check(dataset: str) -> None:
    """The counter on real tensors (real CPU compute, fp32, micro-batch 1) against the trace."""
    from sidbench.config import compose

    overrides = [f"dataset={dataset}"]
    precision = str(compose(overrides).trainer.precision)
    t0 = time.perf_counter()
    real_persistent, real, _, _ = trace(dataset, [1], fake=False)
    t1 = time.perf_counter()
    fake_persistent, faked, _, _ = trace(dataset, [1], fake=True)
    print(f"check {dataset} ({precision}), micro-batch 1: real CPU run {real[1] / MIB:.1f} MiB peak "
          f"({real_persistent / MIB:.1f} persistent, {t1 - t0:.0f} s); trace {faked[1] / MIB:.1f} MiB "
          f"({fake_persistent / MIB:.1f} persistent, {time.perf_counter() - t1:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=CONFIGS)
    parser.add_argument("--check", metavar="DATASET", help="also compare a real CPU run at micro-batch 1 with its trace")
    parser.add_argument("--linearity", action="store_true", help="also trace micro-batch 2 and compare the linear "
                        "extrapolation from 1 and 2 with the trace at batch_gpu")
    args = parser.parse_args(argv)
    # deepcopy of a fake network reads its (absent) data pointers: harmless here
    warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.check:
        check(args.check)
    rows: list[Trace] = []
    done: dict[str, Trace] = {}
    for d in args.datasets:
        key = config_key(d)
        if key in done:  # same network and setting as an earlier dataset
            rows.append(dataclasses.replace(done[key], dataset=d, seconds=0.0))
            continue
        done[key] = r = estimate(d, args.linearity)
        print(f"{d}: traced in {r.seconds:.0f} s", file=sys.stderr, flush=True)
        rows.append(r)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
