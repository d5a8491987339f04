"""Measured GPU memory and speed of one SiD iteration at each published configuration (CUDA only).

    python benchmarks/sid_cuda_measure.py                              # every preset as published
    python benchmarks/sid_cuda_measure.py cifar10 --precisions fp32 bf16 fp16 --tf32 off on
    python benchmarks/sid_cuda_measure.py --json measured.json        # also the rows as JSON

SiD is built exactly as `sidbench run` builds it (teacher, generator and fake score from the preset's
network, its dropout and Adam settings; augmentation on where the preset has it) but with random
weights, on one GPU, with the trainer's own StepContext and EMA. The micro-batch is the preset's
`trainer.batch_gpu` and one "iteration" here is one micro-batch of each update, so the time is per
micro-batch (a full iteration of the global batch repeats it `batch / (batch_gpu * GPUs)` times).

After `--warmup` iterations (Adam's states and cuDNN's choices exist then: the steady state) the
peak counters are reset and `--iterations` iterations are timed with CUDA events. Reported:
milliseconds and images per second per micro-batch, `torch.cuda.max_memory_allocated` (what the
tensors need) and `max_memory_reserved` (what the caching allocator holds) over the timed
iterations, and the peak above the weights of the EMA generator's sampling at `eval.batch_size`.
One GPU only: DDP's gradient buckets (one more float32 copy of G's and the fake score's gradients)
come on top with several GPUs, as in MEMORY.md.

`--tf32` sets both of PyTorch's TF32 switches (cuDNN convolutions and matmuls). EDM's and SiD's
training scripts turn TF32 off for their fp32 runs; PyTorch's defaults are cuDNN on, matmul off.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

CONFIGS = ["cifar10", "ffhq64", "imagenet64"]  # cifar10-cond and afhqv2-64 share these networks
GIB = 2**30


@dataclass
class Row:
    dataset: str
    precision: str
    tf32: bool
    batch_gpu: int
    ms_per_micro_batch: float
    images_per_second: float
    peak_allocated_gib: float
    peak_reserved_gib: float
    persistent_gib: float          # weights, gradients, Adam states and EMA between iterations
    sampling_peak_gib: float | None  # above the weights, at eval_batch; None: out of memory
    eval_batch: int
    seconds: float


def build(dataset: str, precision: str, device: torch.device) -> tuple[Any, Any, Any, Any, int, int]:
    """SiD with random weights at a dataset's published setting; its StepContext and EMA."""
    from sidbench.config import compose
    from sidbench.labels import label_frequencies, label_sampler
    from sidbench.methods import METHODS
    from sidbench.teachers.networks import build_edm_network
    from sidbench.teachers.teacher import Teacher
    from sidbench.trainer.context import StepContext
    from sidbench.trainer.ema import EMA

    cfg = compose([f"dataset={dataset}", f"trainer.precision={precision}"])
    constructor = dict(cfg.dataset.teacher.constructor)
    torch.manual_seed(0)
    net = build_edm_network(constructor).to(device).eval().requires_grad_(False)
    teacher = Teacher(net=net, constructor=constructor, source="random")
    sid = METHODS.get("sid")(teacher, cfg.method, device, cfg)
    labels = None
    if teacher.label_dim:
        freq = label_frequencies(teacher.label_dim, "uniform", cfg.dataset)
        labels = label_sampler(teacher.label_dim, freq, device)
    batch_gpu = int(cfg.trainer.batch_gpu or cfg.trainer.batch)
    ctx = StepContext(sid.networks(), sid.optimizers(), device, batch=batch_gpu, batch_gpu=batch_gpu,
                      precision=precision, label_sampler=labels)
    ema = EMA(sid.generator, float(cfg.trainer.ema_halflife_kimg), cfg.trainer.ema_rampup)
    return sid, ctx, ema, teacher, batch_gpu, int(cfg.eval.batch_size)


def measure(dataset: str, precision: str, tf32: bool, warmup: int, iterations: int, device: torch.device) -> Row:
    start = time.perf_counter()
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.cuda.empty_cache()
    sid, ctx, ema, teacher, batch_gpu, eval_batch = build(dataset, precision, device)
    images = 0

    def step(i: int) -> None:
        nonlocal images
        ctx.iteration = i
        sid.train_step(ctx)
        images += batch_gpu
        ema.update(sid.generator, batch_gpu, images)

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    persistent = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for i in range(warmup, warmup + iterations):
        step(i)
    t1.record()
    torch.cuda.synchronize()
    ms = t0.elapsed_time(t1) / iterations
    peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()

    # Rank 0's evaluation between iterations: the EMA generator, no graph, at eval.batch_size.
    for net in sid.networks().values():
        net.zero_grad(set_to_none=False)  # gradients stay allocated, as between iterations
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    sampling: float | None
    try:
        with torch.no_grad(), ctx.autocast():
            z = torch.randn(eval_batch, *teacher.shape, device=device)
            sid.sample(ema.module, z, ctx.labels(eval_batch))
        torch.cuda.synchronize()
        sampling = (torch.cuda.max_memory_allocated() - before) / GIB
    except torch.cuda.OutOfMemoryError:
        sampling = None
    row = Row(dataset, precision, tf32, batch_gpu, ms, batch_gpu / ms * 1000, peak / GIB, reserved / GIB,
              persistent / GIB, sampling, eval_batch, time.perf_counter() - start)
    del sid, ctx, ema, teacher
    return row


def table(rows: list[Row]) -> str:
    head = ("| dataset | precision | TF32 | batch_gpu | ms per micro-batch | images/s | peak allocated | peak reserved "
            "| between iterations | EMA sampling at eval.batch_size |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sampling = f"{r.sampling_peak_gib:.1f} GiB" if r.sampling_peak_gib is not None else "out of memory"
        lines.append(f"| {r.dataset} | {r.precision} | {'on' if r.tf32 else 'off'} | {r.batch_gpu} | {r.ms_per_micro_batch:.1f} "
                     f"| {r.images_per_second:.0f} | {r.peak_allocated_gib:.2f} GiB | {r.peak_reserved_gib:.2f} GiB "
                     f"| {r.persistent_gib:.2f} GiB | {sampling} (batch {r.eval_batch}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=CONFIGS)
    parser.add_argument("--precisions", nargs="*", default=None, help="default: each preset's own")
    parser.add_argument("--tf32", nargs="*", choices=["on", "off"], default=["off"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this script measures a GPU", file=sys.stderr)
        return 2
    from sidbench.config import compose

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as EDM's and SiD's training scripts
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", file=sys.stderr)
    rows: list[Row] = []
    for dataset in args.datasets:
        for precision in args.precisions or [str(compose([f"dataset={dataset}"]).trainer.precision)]:
            for tf32 in args.tf32:
                try:
                    row = measure(dataset, precision, tf32 == "on", args.warmup, args.iterations, device)
                except torch.cuda.OutOfMemoryError as e:
                    print(f"{dataset} {precision}: out of memory ({str(e).splitlines()[0]})", file=sys.stderr, flush=True)
                    continue
                print(f"{dataset} {precision} tf32={tf32}: {row.ms_per_micro_batch:.1f} ms, "
                      f"{row.peak_allocated_gib:.2f} GiB ({row.seconds:.0f} s)", file=sys.stderr, flush=True)
                rows.append(row)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
