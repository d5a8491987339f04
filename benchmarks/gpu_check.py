"""The GPU measurements of docs/speed.md in one call (a few minutes on one H100), in this order
(the first parts matter most: a row starts only while `--stop-after` seconds have not passed):

1. SiD's real iteration (random weights, the preset's network, `Trainer.step`) at the CIFAR-10
   configuration per precision (fp32 with TF32 off as published, TF32, bf16 and fp16 autocast,
   EDM's fp16 form), at the largest micro-batch that fits: seconds per iteration, images/s,
   counted FLOPs per iteration and MFU (the achieved FLOP/s over the GPU's dense peak for that
   precision);
2. FFHQ 64's peak memory with fp16 autocast against EDM's fp16 form, at the preset's micro-batch;
3. every built-in method's iteration against its network passes alone, at CIFAR-10's published
   micro-batch (32), each in its preset's precision;
4. Adam as built (PyTorch's for-each kernels on CUDA) against its fused kernel (`trainer.optimizer_kernel`,
   fused by default); consistency distillation's RAdam step compiled (`optimizer_kernel=compiled`)
   against part 3's for-each row;
5. `trainer.compile` off and on (compile time apart);
6. compiled with CUDA graphs (`trainer.compile_mode=reduce-overhead`);
7. given `--reference`, the official SiD iteration against sidbench's, side by side.

    python benchmarks/gpu_check.py --out "$OUT"                       # on the GPU machine (gpu_check.sh)
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check      # on a CPU: every code path, tiny sizes

Rows are appended to `<out>/gpu_check.jsonl` as soon as measured and written together to
`<out>/gpu_check.csv` and `<out>/gpu_check.json` at the end; a failed row (out of memory, an
unsupported option) is recorded with its error and the others go on. `--stop-after` starts no new
row after that many seconds. `--smoke` runs the digits network at micro-batch 2 on the CPU, one
timed iteration per row, compile with the "eager" backend (no code generation).
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real_size  # noqa: E402

#: the overrides of each precision row
PRECISIONS = {
    "fp32": ["trainer.precision=fp32", "trainer.tf32=false"],
    "tf32": ["trainer.precision=fp32", "trainer.tf32=true"],
    "bf16": ["trainer.precision=bf16"],
    "fp16": ["trainer.precision=fp16"],
    "edm_fp16": ["trainer.precision=fp32", "trainer.edm_fp16=true"],
}
#: dense peak FLOP/s by GPU name fragment and precision (NVIDIA's data sheets, without sparsity)
PEAKS = {
    "H100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "edm_fp16": 989.4e12},
    "H200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "edm_fp16": 989.4e12},
    "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12, "edm_fp16": 312e12},
}
GIB = 2**30


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks[precision]
    return None


def build(dataset: str, batch: int, precision: str, device: torch.device, extra: list[str]) -> Any:
    from sidbench.config import compose
    from sidbench.schema import validate_run_config

    cfg = compose(["method=sid", f"dataset={dataset}", f"device={device}", f"trainer.batch={batch}", f"trainer.batch_gpu={batch}",
                   *PRECISIONS[precision], *extra])
    validate_run_config(cfg)
    teacher = real_size.random_teacher(cfg, device)
    trainer, _ = real_size.make_trainer(cfg, teacher, device)
    return trainer


def guarded(row: dict[str, Any], device: torch.device, body: Callable[[], None]) -> dict[str, Any]:
    """Run a row's `body`, which fills `row`: a failure (out of memory, an unsupported option)
    becomes the row's status and the others go on; the body's memory is released after it."""
    start = time.perf_counter()
    try:
        body()
    except torch.cuda.OutOfMemoryError:
        row["status"] = "out of memory"
    except Exception as e:  # noqa: BLE001 - one failed row must not cost the others
        row["status"] = f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row["row_seconds"] = time.perf_counter() - start
    return row


def measure(dataset: str, batch: int, precision: str, device: torch.device, warmup: int, iterations: int,
            compile_on: bool = False, extra: list[str] | None = None) -> dict[str, Any]:
    from sidbench.trainer.speed import compile_seconds

    row: dict[str, Any] = {"dataset": dataset, "micro_batch": batch, "precision": precision, "compile": compile_on,
                           "overrides": list(extra or []), "device": real_size.device_name(device), "torch": torch.__version__}

    def body() -> None:
        compiled_before = compile_seconds()
        trainer = build(dataset, batch, precision, device, [*(extra or []), f"trainer.compile={str(compile_on).lower()}"])
        step = real_size.stepper(trainer, batch)
        try:
            t0 = time.perf_counter()
            for _ in range(warmup):
                step()
            real_size.as_mid_run(trainer)  # after the warm-up made the optimisers' states
            real_size.synchronize(device)
            row["warmup_seconds"] = time.perf_counter() - t0
            row["compile_seconds"] = compile_seconds() - compiled_before
            trainer.counter.take()
            real_size.reset_peak(device)
            t0 = time.perf_counter()
            for _ in range(iterations):
                step()
            real_size.synchronize(device)
            seconds = (time.perf_counter() - t0) / iterations
            cost = trainer.counter.take()
            peak, reserved = real_size.read_peak(device)
            flops = cost.flops / iterations
            peak_rate = peak_flops(device, precision)
            row.update(status="measured", iterations=iterations, seconds_per_iteration=seconds, images_per_second=batch / seconds,
                       flops_per_iteration=flops, flops_per_second=flops / seconds,
                       mfu=(flops / seconds / peak_rate) if peak_rate else None, peak_memory_gib=peak, peak_reserved_gib=reserved)
        finally:
            trainer.counter.detach()

    return guarded(row, device, body)


def measure_ratio(method: str, dataset: str, batch: int, device: torch.device, rounds: int,
                  extra: list[str] | None = None) -> dict[str, Any]:
    """A built-in method's real iteration (its preset for `dataset` plus the `extra` overrides,
    random weights, micro-batch `batch`) against its network passes replayed alone
    (benchmarks/passes.py), in turns, wall time after a synchronise; fastest of `rounds` each."""
    import passes as passes_mod
    from side_by_side import Timer

    row: dict[str, Any] = {"method": method, "dataset": dataset, "micro_batch": batch, "device": real_size.device_name(device),
                           "torch": torch.__version__}

    def body() -> None:
        with real_size.scratch_folder() as scratch:
            images = scratch / "images"  # named as training images for methods that read them; never opened
            images.mkdir()
            cfg, row["overrides"], notes = real_size.compose_row(method, dataset, device, batch, images, extra=extra or [])
            row["precision"], row["notes"] = str(cfg.trainer.precision), "; ".join(notes)
            trainer, row["stage"] = real_size.make_trainer(cfg, real_size.random_teacher(cfg, device), device)
            step = real_size.stepper(trainer, batch)
            try:
                step()  # optimiser states exist; the compute counter has measured this kind
                real_size.as_mid_run(trainer)
                trainer.counter.take()
                recorded = passes_mod.record_passes(passes_mod.method_networks(trainer.method), step)
                row["counted_passes_per_iteration"] = trainer.counter.take().passes  # what the replay must repeat
                timers = {"iteration": Timer(device), "passes": Timer(device)}
                for _ in range(rounds):
                    timers["passes"](lambda: passes_mod.replay(recorded, trainer.ctx.autocast))
                    timers["iteration"](step)
                iteration, passes = min(timers["iteration"].wall), min(timers["passes"].wall)
                row.update(status="measured", seconds_per_iteration=iteration, passes_seconds=passes,
                           images_per_second=batch / iteration, iteration_over_passes=iteration / passes,
                           passes_per_iteration=passes_mod.passes_per_image(recorded))
            finally:
                trainer.counter.detach()

    return guarded(row, device, body)


def largest_batch(dataset: str, precision: str, device: torch.device, candidates: list[int]) -> int:
    """The largest candidate micro-batch whose iteration runs (one warm-up, one timed)."""
    best = candidates[0]
    for b in candidates:
        if measure(dataset, b, precision, device, 1, 1)["status"] != "measured":
            break
        best = b
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU, digits network, micro-batch 2: every code path in a minute")
    parser.add_argument("--reference", type=Path, default=None, help="a checkout of the official SiD code: side-by-side rows")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256], help="micro-batches tried for the largest that fits")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--stop-after", type=float, default=480.0, help="start no row after this many seconds")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "gpu_check.jsonl"
    jsonl.write_text("")
    if args.smoke:
        from sidbench.trainer import speed

        device, cifar, ffhq, batches, warmup, iterations = torch.device("cpu"), "digits", "digits", [2], 1, 1
        speed.COMPILE_OPTIONS = {"backend": "eager"}  # the option's path without code generation
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --smoke on a CPU")
        device, cifar, ffhq, batches, warmup, iterations = torch.device("cuda"), "cifar10", "ffhq64", args.batches, args.warmup, args.iterations
    begin = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any], part: str) -> None:
        row["part"] = part
        rows.append(row)
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        what = row["method"] if "method" in row else f"compile={row.get('compile', '')} {' '.join(row.get('overrides') or [])}"
        detail = (f"iteration / passes {row.get('iteration_over_passes') or 0:.3f}" if "method" in row
                  else f"MFU {row.get('mfu') or 0:.3f} peak {row.get('peak_memory_gib') or 0:.2f} GiB")
        print(f"{part}: {row['dataset']} {row.get('precision', '')} b{row.get('micro_batch', '')} {what}: "
              f"{row['status']} {row.get('seconds_per_iteration') or 0:.4g} s/it {row.get('images_per_second') or 0:.4g} img/s {detail}",
              flush=True)

    def time_left() -> bool:
        return time.perf_counter() - begin < args.stop_after

    # 1. precisions at the largest micro-batch fp32 fits (the most memory-hungry: every precision fits it)
    batch = largest_batch(cifar, "fp32", device, batches)
    for precision in PRECISIONS:
        if time_left():
            add(measure(cifar, batch, precision, device, warmup, iterations), "precision")
    # 2. FFHQ 64 memory: fp16 autocast against EDM's fp16 form, the preset's micro-batch
    ffhq_batch = 2 if args.smoke else 32
    for precision in ("fp16", "edm_fp16"):
        if time_left():
            add(measure(ffhq, ffhq_batch, precision, device, warmup, iterations), "ffhq_memory")
    # 3. every built-in method's iteration against its passes alone, at CIFAR-10's published micro-batch
    #    (SiD's 256 over 8 GPUs), each in its preset's precision
    for method in (m for m in real_size.builtin_methods() if m not in real_size.VARIANTS):
        if time_left():
            add(measure_ratio(method, cifar, 2 if args.smoke else 32, device, iterations), "methods")
    # 4. Adam as built against the fused kernel of part 1's bf16 row (the default; same micro-batch)
    if time_left():
        add(measure(cifar, batch, "bf16", device, warmup, iterations, extra=["trainer.optimizer_kernel=as_built"]), "optimizer")
    #    and RAdam's step compiled (no fused RAdam exists), against part 3's consistency row
    if time_left():
        add(measure_ratio("consistency", cifar, 2 if args.smoke else 32, device, iterations,
                          extra=["trainer.optimizer_kernel=compiled"]), "optimizer")
    # 5. compile off and on (bf16, the fastest precision expected)
    for on in (False, True):
        if time_left():
            add(measure(cifar, batch, "bf16", device, warmup, iterations, compile_on=on), "compile")
    # 6. compiled with CUDA graphs (part 5's compiled row recorded as graphs and replayed)
    if time_left():
        add(measure(cifar, batch, "bf16", device, warmup, iterations, compile_on=True,
                    extra=["trainer.compile_mode=reduce-overhead"]), "cuda_graphs")
    # 7. official SiD against sidbench's, side by side (fp32, TF32 off as published)
    if args.reference is not None and time_left():
        import side_by_side

        t0 = time.perf_counter()
        try:
            sbs = side_by_side.measure(args.reference, cifar, 2 if args.smoke else 32, rounds=iterations, warmup=1, device=device)
            row = {"dataset": cifar, "micro_batch": sbs["setup"]["batch"], "precision": "fp32", "status": "measured",
                   "official_over_sidbench": sbs.get("official_over_sidbench_wall" if device.type == "cuda" else "official_over_sidbench"),
                   "sidbench_over_passes": sbs.get("sidbench_over_passes_wall" if device.type == "cuda" else "sidbench_over_passes"),
                   "detail": sbs}
        except Exception as e:  # noqa: BLE001
            row = {"dataset": cifar, "status": f"failed: {type(e).__name__}: {e}"}
        row["row_seconds"] = time.perf_counter() - t0
        add(row, "side_by_side")
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    keys = sorted({k for r in rows for k in r if k != "detail"})
    with open(args.out / "gpu_check.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
