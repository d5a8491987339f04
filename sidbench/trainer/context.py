"""What the trainer hands a method for one iteration: micro-batching, precision, loss scaling,
gradient sanitising and clipping, the optimiser steps, counted compute and logged values, the
same for every method."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from sidbench.data.loader import RealImageLoader
from sidbench.data.real import RealImages
from sidbench.seeding import seed_torch
from sidbench.trainer.compute import ComputeCounter

# Mixed precision is autocast only: weights, their gradients, Adam's states and the EMA stay
# float32 (autocast casts per operation, and the casts' backward hands float32 gradients to the
# float32 weights), so micro-batch accumulation and DDP's all-reduce run in float32.
#
# fp16 uses no GradScaler, on purpose. The published SiD runs use a static loss scale (100 for the
# generator, 1 for the fake score) and `nan_to_num` of the gradients, and the update here does the
# same: (1) the constant scale keeps the half-precision activation gradients of the generator loss
# out of the underflow range, which is all a GradScaler's scale is for; (2) the scale is never
# divided out, and need not be: Adam's step is invariant to a constant gradient scale s once its eps
# is scaled by s too (for the generator, the fp16 presets' eps 1e-6 at s = 100 acts as eps 1e-8 on
# the unscaled gradient; tests/trainer/test_precision.py checks the invariance);
# (3) a non-finite gradient is zeroed element-wise, not made to skip the whole step. A GradScaler
# would change (2) and (3), i.e. the published update rule, and its dynamic scale would make runs
# depend on their overflow history. bf16 has float32's range and needs no scaling at all.
# (CPU autocast accepts float16 too, so every precision runs in the CPU tests.)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def configure_cuda_math(tf32: bool, cudnn_benchmark: bool) -> None:
    """Process-wide CUDA math switches, set once before training.

    PyTorch's defaults allow TF32 in cuDNN convolutions (not in matmuls), so an "fp32" run would
    silently compute its convolutions with 10-bit mantissas; the published EDM and SiD runs turn
    TF32 off everywhere, and so does `tf32=False`. Both switches are ignored on the CPU.
    """
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def configure_cpu_math(flush_denormal: bool) -> None:
    """Process-wide CPU math switch, set once before training: subnormal floats (below 1.2e-38 in
    float32) read and written as zero. x86 CPUs compute on subnormals many times slower, and an
    Adam second moment of small gradients decays into them (DMD's generator on CIFAR-10: 15M of
    its 56M entries, which made its fused AdamW step 5x slower). Flushing changes a value only
    below 1.2e-38, e.g. Adam's denominator sqrt(v) + eps by less than 1e-19 against eps = 1e-8.
    CUDA ignores it (GPUs run subnormals at full speed); `set_flush_denormal` is a no-op where the
    CPU lacks the flag."""
    torch.set_flush_denormal(flush_denormal)


def configure_math(trainer: Mapping[str, Any]) -> None:
    """Every process-wide math switch from the run's `trainer` settings (CUDA's and the CPU's),
    set once before anything is built: `sidbench run` and the benchmarks both start here."""
    configure_cuda_math(bool(trainer["tf32"]), bool(trainer["cudnn_benchmark"]))
    configure_cpu_math(bool(trainer["flush_denormal"]))


#: what a CPU needs for oneDNN's own half-precision kernels
NATIVE_NEEDS = {"bf16": "AVX-512 or Arm's BF16 extension", "fp16": "AVX-512 FP16 or AMX-FP16"}


def cpu_has_native(precision: str) -> bool:
    """Whether this CPU's oneDNN has kernels of its own for `precision` (`NATIVE_NEEDS`, as torch
    checks it). Without them a convolution under autocast falls back to reference code. On a
    2-core AVX2-only AMD EPYC (torch 2.14.1, one thread), a CIFAR-10 DDPM++ forward at batch 1 took
    57 s of CPU in bf16 and 60 s in fp16 against 0.7 s in fp32 (75-80x), and the digits network's
    at batch 128 0.59 s and 0.51 s against 0.052 s (10-11x)."""
    if precision == "fp32":
        return True
    check = torch.ops.mkldnn._is_mkldnn_bf16_supported if precision == "bf16" else torch.ops.mkldnn._is_mkldnn_fp16_supported
    return bool(check())


def emulated_precision_warning(precision: str, device: torch.device) -> str | None:
    """One line for the console when `precision` would run emulated on this CPU; None otherwise
    (fp32, a CUDA device, or a CPU with native kernels). Results are right either way: it is only
    slow, so a run warns and goes on."""
    if precision == "fp32" or device.type != "cpu" or cpu_has_native(precision):
        return None
    return (f"warning: trainer.precision={precision} has no native kernels on this CPU (they need {NATIVE_NEEDS[precision]}), so "
            f"its convolutions run 10-80x slower than in fp32; set trainer.precision=fp32 for a CPU run")


#: loss_fn(micro_batch_size) -> (loss summed over the micro-batch's elements, {name: value to log}).
#: Logged values may be tensors: they are gathered on the device and read once per iteration.
LossFn = Callable[[int], tuple[torch.Tensor, dict[str, "torch.Tensor | float"]]]


def sanitize_gradients(params: list[torch.nn.Parameter]) -> None:
    """Non-finite gradients to finite values, as the published SiD code does before each step."""
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


def clip_gradients(params: list[torch.nn.Parameter], norm: float | None, value: float | None) -> None:
    """Clip by value, then by the global norm over `params` (torch.nn.utils), on the gradient as
    backpropagated, i.e. after loss scaling, as the published codes clip."""
    if value is not None:
        torch.nn.utils.clip_grad_value_(params, value)
    if norm is not None:
        torch.nn.utils.clip_grad_norm_(params, norm)


def split_batch(batch: int, batch_gpu: int | None) -> list[int]:
    """Sizes of the micro-batches that make up this process's share of the batch."""
    if batch_gpu is None or batch_gpu >= batch:
        return [batch]
    return [batch_gpu] * (batch // batch_gpu) + ([batch % batch_gpu] if batch % batch_gpu else [])


class StepContext:
    """Runs a method's updates. One instance lives for the whole run."""

    def __init__(
        self,
        networks: dict[str, torch.nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        device: torch.device,
        batch: int,
        batch_gpu: int | None = None,
        precision: str = "fp32",
        label_sampler: Callable[[int], torch.Tensor | None] | None = None,
        wrapped: dict[str, torch.nn.Module] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        real_data: RealImages | RealImageLoader | None = None,
        counter: ComputeCounter | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.networks = networks
        self.optimizers = optimizers
        self.device = device
        self.batch = batch  # this process's share of the global batch
        self.micro_batches = split_batch(batch, batch_gpu)
        self.precision = precision
        self._label_sampler = label_sampler
        self._real_data = real_data  # only for methods whose `uses_real_data(cfg)` is true
        self._wrapped = wrapped or {}  # DDP wrappers, used only for the networks being updated
        self._updating: frozenset[str] = frozenset()
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.counter = counter or ComputeCounter(count_flops=False)
        self.iteration = 0  # set by the trainer before each iteration
        self._update_index = (-1, 0)  # (iteration, updates so far in it)
        self._logged: dict[str, list[torch.Tensor | float]] = {}

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def labels(self, n: int) -> torch.Tensor | None:
        """One-hot labels drawn from the dataset's label frequencies (None if unconditional)."""
        return None if self._label_sampler is None else self._label_sampler(n)

    def real(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n real training images in [-1, 1] and their one-hot labels (None if unconditional).

        Images held in memory (the bundled digits) are drawn from the micro-batch's seeded random
        state, like the method's noise; a dataset on disk is read from its loader's stream of the
        run seed, decoded ahead by worker processes (`sidbench.data.loader`). Call it inside an
        update's loss function. Only for methods whose `uses_real_data(cfg)` is true.
        """
        if self._real_data is None:
            raise RuntimeError("ctx.real() needs the method's `uses_real_data(cfg)` to return True, so that the run opens its images")
        return self._real_data.draw(n, self.device)

    def net(self, name: str) -> torch.nn.Module:
        """The network to call: its DDP wrapper while it is one being updated, else the module
        itself (a frozen pass through another network must not take part in DDP's reduction)."""
        if name in self._updating and name in self._wrapped:
            return self._wrapped[name]
        return self.networks[name]

    def log(self, name: str, value: torch.Tensor | float) -> None:
        """Log a number that is not a loss (a step count, dropped samples, mean logits) as
        `train/<name>`: averaged over the calls of an iteration and over processes, then over the
        logging tick. A tensor stays on the device; the trainer reads all values once an iteration."""
        self._logged.setdefault(name, []).append(value.detach() if isinstance(value, torch.Tensor) else float(value))

    def warn(self, message: str) -> None:
        """One warning line on the console (rank 0 only): a setting the method finds questionable at
        run time, e.g. a micro-batch that changes its training signal."""
        if self.rank == 0:
            from rich.console import Console

            Console(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    def take_logs(self) -> dict[str, torch.Tensor | float]:
        """The values `log` gathered since the last call, each averaged over its calls."""
        out = {k: sum(v) / len(v) for k, v in self._logged.items()}
        self._logged = {}
        return out

    def precompute(self) -> contextlib.AbstractContextManager:
        """Context for work done before training (teacher samples, regression pairs), so that its
        network calls are charged to the run's compute. Seeded by the run seed alone."""
        seed_torch(self.seed, 2**32)  # a stream of its own, apart from every (iteration, update)
        return self.counter.precompute()

    @contextlib.contextmanager
    def _only_trains(self, names: frozenset[str]) -> Iterator[None]:
        # Gradients reach only the updated networks' parameters; the others pass gradients to
        # their inputs but accumulate nothing (and cost no weight-gradient compute).
        previous = {k: [p.requires_grad for p in n.parameters()] for k, n in self.networks.items()}
        for k, n in self.networks.items():
            n.requires_grad_(k in names)
        self._updating = names
        try:
            yield
        finally:
            self._updating = frozenset()
            for k, n in self.networks.items():
                for p, flag in zip(n.parameters(), previous[k]):
                    p.requires_grad_(flag)

    def _seed_micro_batch(self, update_index: int, micro_index: int) -> None:
        # Every micro-batch draws from a stream fixed by (seed, iteration, update, global
        # micro-batch index): a resumed run repeats the same draws, and N processes with batch_gpu
        # draw exactly what one process draws with the same global batch and batch_gpu.
        global_index = self.rank * len(self.micro_batches) + micro_index
        seed_torch(self.seed, self.iteration, update_index, global_index)

    def update(
        self,
        names: str | Sequence[str],
        loss_fn: LossFn,
        loss_scale: float = 1.0,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
    ) -> dict[str, torch.Tensor | float]:
        """One optimiser step of each network in `names` (one name, or several trained jointly,
        e.g. a fake score and its GAN head, each with its own optimiser) on this process's batch.

        For each micro-batch: `loss_fn(m)` returns the loss summed over its elements; we
        backpropagate `loss * loss_scale / batch` (so the step sees the batch mean, as in EDM and
        SiD). Then the gradients are sanitised (non-finite to finite), clipped if asked (by value,
        then by the norm over all the updated networks together) and every optimiser steps.
        Returns the logs averaged over micro-batches (tensors stay on the device).
        """
        group = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in group if n not in self.optimizers]
        if unknown:
            raise KeyError(f"update of {unknown}: no optimiser of that name; the method's optimizers() has {sorted(self.optimizers)}")
        optimizers = [self.optimizers[n] for n in group]
        params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        logs: dict[str, torch.Tensor | float] = {}
        wrappers = [self._wrapped[n] for n in group if n in self._wrapped]
        it, k = self._update_index
        update_index = k if it == self.iteration else 0
        self._update_index = (self.iteration, update_index + 1)
        with self._only_trains(frozenset(group)):
            for i, m in enumerate(self.micro_batches):
                self._seed_micro_batch(update_index, i)
                last = i == len(self.micro_batches) - 1
                with contextlib.ExitStack() as sync:
                    if not last:  # DDP reduces once, after the last micro-batch
                        for w in wrappers:
                            sync.enter_context(w.no_sync())
                    with self.autocast():
                        loss, items = loss_fn(m)
                    (loss.float() * (loss_scale / self.batch)).backward()
                for key, v in items.items():
                    v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
                    logs[key] = logs.get(key, 0.0) + v * (m / self.batch)
        sanitize_gradients(params)
        clip_gradients(params, clip_grad_norm, clip_grad_value)
        for opt in optimizers:
            opt.step()
        return logs
