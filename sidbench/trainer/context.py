"""What the trainer hands a method for one iteration: micro-batching, precision, loss scaling,
gradient sanitising and the optimiser step, the same for every method."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from sidbench.data.real import RealImages

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

#: loss_fn(micro_batch_size) -> (loss summed over the micro-batch's elements, {name: value to log})
LossFn = Callable[[int], tuple[torch.Tensor, dict[str, float]]]


def sanitize_gradients(params: list[torch.nn.Parameter]) -> None:
    """Non-finite gradients to finite values, as the published SiD code does before each step."""
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


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
        real_data: RealImages | None = None,
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
        self._real_data = real_data  # only for methods that declare `uses_real_data`
        self._wrapped = wrapped or {}  # DDP wrappers, used only for the network being updated
        self._updating: str | None = None
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.iteration = 0  # set by the trainer before each iteration
        self._update_index = (-1, 0)  # (iteration, updates so far in it)

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

        Drawn from the micro-batch's seeded random state, like the method's noise: call it inside
        an update's loss function. Only for methods with `uses_real_data = True`.
        """
        if self._real_data is None:
            raise RuntimeError("ctx.real() needs the method to declare `uses_real_data = True`, so that the run opens its images")
        return self._real_data.draw(n, self.device)

    def net(self, name: str) -> torch.nn.Module:
        """The network to call: its DDP wrapper while it is the one being updated, else the module
        itself (a frozen pass through another network must not take part in DDP's reduction)."""
        if name == self._updating and name in self._wrapped:
            return self._wrapped[name]
        return self.networks[name]

    @contextlib.contextmanager
    def _only_trains(self, name: str) -> Iterator[None]:
        # Gradients reach only the updated network's parameters; the others pass gradients to
        # their inputs but accumulate nothing (and cost no weight-gradient compute).
        previous = {k: [p.requires_grad for p in n.parameters()] for k, n in self.networks.items()}
        for k, n in self.networks.items():
            n.requires_grad_(k == name)
        self._updating = name
        try:
            yield
        finally:
            self._updating = None
            for k, n in self.networks.items():
                for p, flag in zip(n.parameters(), previous[k]):
                    p.requires_grad_(flag)

    def _seed_micro_batch(self, update_index: int, micro_index: int) -> None:
        # Every micro-batch draws from a stream fixed by (seed, iteration, update, global
        # micro-batch index): a resumed run repeats the same draws, and N processes with batch_gpu
        # draw exactly what one process draws with the same global batch and batch_gpu.
        global_index = self.rank * len(self.micro_batches) + micro_index
        torch.manual_seed(hash((self.seed, self.iteration, update_index, global_index)) % (2**63))

    def update(self, name: str, loss_fn: LossFn, loss_scale: float = 1.0) -> dict[str, float]:
        """One optimiser step of network `name` on this process's batch.

        For each micro-batch: `loss_fn(m)` returns the loss summed over its elements; we
        backpropagate `loss * loss_scale / batch` (so the step sees the batch mean, as in EDM and
        SiD), sanitise the gradients, and step. Returns the logs averaged over micro-batches.
        """
        optimizer = self.optimizers[name]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        wrapper = self._wrapped.get(name)
        it, k = self._update_index
        update_index = k if it == self.iteration else 0
        self._update_index = (self.iteration, update_index + 1)
        with self._only_trains(name):
            for i, m in enumerate(self.micro_batches):
                self._seed_micro_batch(update_index, i)
                last = i == len(self.micro_batches) - 1
                sync = contextlib.nullcontext() if (wrapper is None or last) else wrapper.no_sync()
                with sync:
                    with self.autocast():
                        loss, items = loss_fn(m)
                    (loss.float() * (loss_scale / self.batch)).backward()
                for k, v in items.items():
                    logs[k] = logs.get(k, 0.0) + float(v) * m / self.batch
        sanitize_gradients(params)
        optimizer.step()
        return logs
