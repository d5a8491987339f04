"""Does the real-image loader keep up with training? Images/s of `RealImageLoader` (an EDM dataset
zip decoded by DataLoader workers) against the images/s a method consumes.

    python benchmarks/real_loader.py --resolution 32 64 --workers 0 1 2 4 --out benchmarks/REAL_DATA.md
    python benchmarks/real_loader.py --resolution 32 --compare sid dmd2 --device cuda   # with methods' speed

The dataset is a zip written by `sidbench.data.make_dataset.write_edm_zip` (EDM's layout) of
`--count` synthetic images: smooth random colour fields (4x4 noise upsampled bicubically to the
resolution, plus a little pixel noise), whose PNGs are about the size of CIFAR-10's natural images
(random pixel noise would compress worse and decode slower than any photograph). For each
(resolution, workers), after one warm-up draw (the workers' start), `--seconds` of draws of
`--micro-batch` images each are timed: images/s is what the training loop received per second
with nothing else to do, the loader's ceiling; "wait per draw" is the time one `draw` blocks.

A method consumes `images/s of its iteration x real images per generated image` (SiDA: 2, one real
batch for the fake score and one for the generator's labels; DMD2's GAN head: 1; progressive and
consistency's data modes: 1). With `--compare`, each named method's generator images/s is measured
at the dataset preset's micro-batch on `--device` with `benchmarks/real_size.py`'s own row (random
weights, the trainer's iteration) and printed beside the loader's. The loader keeps up while its
images/s per training process exceeds the method's consumption per process.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: dataset whose preset a resolution's methods are compared at
DATASET_OF = {32: "cifar10", 64: "ffhq64"}
#: real images a method reads per generated image (the module's docstring)
REAL_PER_IMAGE = {"sida": 2, "sid2a": 2, "dmd2-gan": 1, "progressive": 1, "consistency": 1}


def synthetic_images(count: int, resolution: int, seed: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """Smooth random colour fields, uint8 HWC, with classes i % 10."""
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        coarse = torch.rand(1, 3, 4, 4, generator=g)
        field = torch.nn.functional.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
        field = field + 0.03 * torch.randn(field.shape, generator=g)
        pixels = (field.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        yield pixels, i % 10


def measure_loader(path: Path, resolution: int, workers: int, micro_batch: int, seconds: float, chunk: int,
                   prefetch: int) -> dict[str, float]:
    from sidbench.data.loader import RealImageLoader
    from sidbench.data.real import open_edm_dataset

    data = open_edm_dataset(path, (3, resolution, resolution), label_dim=10)
    loader = RealImageLoader(data, seed=0, workers=workers, prefetch=prefetch, chunk=chunk)
    cpu = torch.device("cpu")
    loader.draw(micro_batch, cpu)  # warm-up: the workers start and fill their queues
    drawn, waits, start = 0, [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        loader.draw(micro_batch, cpu)
        waits.append(time.perf_counter() - t)
        drawn += micro_batch
    elapsed = time.perf_counter() - start
    loader.close()
    return {"images_per_s": drawn / elapsed, "wait_ms": 1000 * float(np.median(waits)), "draws": len(waits)}


def method_images_per_s(method: str, dataset: str, device: torch.device) -> tuple[float | None, int, str]:
    """(generator images/s, micro-batch, status) of one row of benchmarks/real_size.py."""
    import real_size

    row = real_size.Row(method, dataset)
    with real_size.scratch_folder() as scratch:
        images = scratch / "images"
        images.mkdir()
        real_size.run_row(row, device, None, warmup=2, iterations=5, teachers={}, images=images)
    return row.images_per_second, row.micro_batch, row.status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, nargs="+", default=[32, 64], choices=sorted(DATASET_OF))
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--count", type=int, default=10000, help="images in the synthetic zip")
    ap.add_argument("--micro-batch", type=int, default=256, help="images per draw (a GPU-sized micro-batch)")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--prefetch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--compare", nargs="*", default=[], help="methods whose images/s to measure (real_size.py's rows)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="a Markdown file to write the table to")
    args = ap.parse_args(argv)

    from sidbench.data.make_dataset import write_edm_zip

    lines = [f"Measured {dt.date.today()} on {os.cpu_count()} CPU cores ({torch.__version__}); "
             f"{args.count} synthetic images per zip, draws of {args.micro_batch}, chunk {args.chunk}, "
             f"prefetch {args.prefetch}, {args.seconds:g} s each.", "",
             "| resolution | workers | loader images/s | wait per draw (median) | draws |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="real_loader-") as tmp:
        for r in args.resolution:
            path, _ = write_edm_zip(Path(tmp) / f"synthetic-{r}.zip", synthetic_images(args.count, r))
            size = path.stat().st_size / args.count
            for w in args.workers:
                m = measure_loader(path, r, w, args.micro_batch, args.seconds, args.chunk, args.prefetch)
                line = f"| {r}x{r} ({size / 1024:.1f} KiB/image) | {w} | {m['images_per_s']:,.0f} | {m['wait_ms']:.2f} ms | {m['draws']} |"
                print(line, flush=True)
                lines.append(line)
    if args.compare:
        device = torch.device(args.device)
        lines += ["", f"Methods on {args.device} (benchmarks/real_size.py rows, preset micro-batch):", "",
                  "| method | dataset | micro-batch | generator images/s | real images/s it reads | status |",
                  "|---|---|---|---|---|---|"]
        for r in args.resolution:
            for method in args.compare:
                ips, mb, status = method_images_per_s(method, DATASET_OF[r], device)
                reads = "" if ips is None else f"{ips * REAL_PER_IMAGE.get(method, 0):,.0f}"
                line = f"| {method} | {DATASET_OF[r]} | {mb} | {'' if ips is None else f'{ips:,.1f}'} | {reads} | {status} |"
                print(line, flush=True)
                lines.append(line)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
