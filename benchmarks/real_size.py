"""Every built-in method at every real dataset's size, once: seconds per iteration, images/s, counted
network passes and FLOPs, and peak memory, at the published micro-batch with random weights.

    python benchmarks/real_size.py --device cuda --out benchmarks/real_size.md   # the whole matrix on a GPU
    python benchmarks/real_size.py --methods sid dmd2 --datasets cifar10 --device cpu --batch-gpu 1

Each row is one (method, dataset): its config is composed as `sidbench run method=<m> dataset=<d>`
composes it (the preset's network, precision, micro-batch `trainer.batch_gpu` and method settings,
checked by the same schema), plus the overrides the row lists. The teacher is the dataset card's
constructor with random weights (nothing is downloaded; one teacher per dataset, shared by its
rows), the method is built through the registry, and its iterations run through the trainer's own
`Trainer.step` (StepContext, compute counter, LR schedules, EMA). What differs from a run:
- one iteration is ONE micro-batch (`trainer.batch` = `trainer.batch_gpu`); a run's iteration
  repeats it `batch / (batch_gpu x processes)` times (so time per micro-batch, as in MEMORY.md);
- methods with stages are measured in their LAST stage, where a run spends nearly all of its time
  (SiDA with its adversarial term; progressive distillation's last student, with the promoted
  teacher beside it);
- real images (the methods that read them: SiDA, Uni-Instruct, ECT, the GAN heads of DMD2 and
  f-distill, `method.data=real`) are random images of the teacher's shape
  drawn through the trainer's `RealImages` interface (`dataset.images.path` names an empty
  temporary folder, which only passes the config check; nothing opens it);
- teacher samples and DMD's regression pairs, made before training, are made for one micro-batch
  with 1 Heun step: precomputation is excluded from the timing (and from the counts);
- LPIPS (consistency presets) needs the `lpips` package and its weights offline; without them the
  row runs `distance=l2` and says so;
- a half-precision preset on a CPU without native kernels for it (bf16 without AVX-512, e.g. an
  AVX2-only EPYC, where one DMD2 iteration at micro-batch 1 took 239 s instead of 5.7) runs in
  fp32 and says so.
After `--warmup` iterations (the compute counter has measured every kind of iteration by then, and
cuDNN has chosen its algorithms; keep `--iterations` a multiple of DMD2's `ttur`, 5, so the TTUR
average is exact), `--iterations` are timed. Peak memory is `torch.cuda.max_memory_allocated()` over
the timed iterations on CUDA; on the CPU it is the process's peak resident set size
(`resource.getrusage`, reset before the timed iterations through /proc/self/clear_refs where Linux
allows it, else the process's lifetime peak), which includes Python and torch themselves.

Rows go in the order of `--datasets` then `--methods`; the defaults put the three distinct networks
(cifar10 DDPM++, ffhq64's 64x64 DDPM++, imagenet64's ADM) first, and the two datasets that repeat
them (cifar10-cond, afhqv2-64) last, so that a time limit cuts the least informative rows. Each row
is written to `--out` (Markdown, rewritten) and `--out` with `.jsonl` (appended) as soon as it is
measured; rows not reached say so. `--stop-after` starts no row after that many seconds.
The default rows are every registered method (a plugin's too) and DMD2's GAN variant; SiD²A has
no row of its own: its iteration is SiDA's (`SAME_ITERATION`).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

#: a variant of a method = (the method, its extra overrides)
VARIANTS = {"dmd2-gan": ("dmd2", ["method.gan.enabled=true"])}  # DMD2's published GAN run (ImageNet 64)
#: methods whose iteration another row times: SiD²A is SiDA's iteration, started from a trained SiD
#: generator (it is refused without one, `method.init`)
SAME_ITERATION = {"sid2a": "sida"}


def default_methods() -> list[str]:
    """The matrix's rows: every registered method (plugins included), one per distinct iteration, SiD
    first (a time limit cuts the last rows), each variant after its method."""
    from sidbench.methods import METHODS as REGISTRY

    names = sorted((n for n in REGISTRY.names() if n not in SAME_ITERATION), key=lambda n: (n != "sid", n))
    return [row for n in names for row in (n, *(v for v, (base, _) in VARIANTS.items() if base == n))]


def builtin_methods() -> list[str]:
    """`default_methods()` without plugins: the rows of the methods sidbench ships."""
    from sidbench.methods import METHODS as REGISTRY

    def shipped(name: str) -> bool:
        try:
            return REGISTRY.get(VARIANTS.get(name, (name, []))[0]).__module__.startswith("sidbench.methods.")
        except Exception:  # noqa: BLE001 - a plugin that does not even load is not one of ours
            return False

    return [m for m in default_methods() if shipped(m)]


#: the real datasets: distinct networks first (cifar10-cond and afhqv2-64 repeat cifar10's and ffhq64's)
DATASETS = ["cifar10", "ffhq64", "imagenet64", "cifar10-cond", "afhqv2-64"]
GIB = 2**30
NOT_REACHED = "not measured: not reached (the run stopped before this row)"


@dataclass
class Row:
    method: str
    dataset: str
    status: str = NOT_REACHED  # "measured", or why not ("skipped: ...", "failed: ...", "not measured: ...")
    precision: str = ""
    micro_batch: int = 0
    iterations: int = 0            # timed, after the warm-up
    seconds_per_iteration: float | None = None
    images_per_second: float | None = None  # generator images (the micro-batch) per second
    passes_per_iteration: float | None = None
    teacher_passes_per_iteration: float | None = None
    flops_per_iteration: float | None = None
    flops_per_second: float | None = None
    peak_memory_gib: float | None = None
    peak_memory_kind: str = ""     # what the peak is: CUDA allocated, or the CPU process's RSS
    peak_reserved_gib: float | None = None  # CUDA only: what the caching allocator held
    sample_shape: list[int] = field(default_factory=list)  # the EMA generator's images for one micro-batch
    stage: str = ""
    overrides: list[str] = field(default_factory=list)  # `sidbench run` overrides this row ran with
    notes: str = ""
    row_seconds: float | None = None  # everything: composing, building, precomputing, warm-up, timing
    device: str = ""
    torch: str = torch.__version__
    date: str = ""


# -- the config ------------------------------------------------------------------------------------
def base_overrides(name: str, dataset: str, device: str) -> list[str]:
    method, extra = VARIANTS.get(name, (name, []))
    return [f"method={method}", f"dataset={dataset}", *extra, f"device={device}"]


def precompute_overrides(method: DictConfig, n: int) -> list[str]:
    """Teacher samples (progressive, consistency) and DMD's regression pairs for one micro-batch, with
    1 Heun step: what is made before training is not what this script times."""
    made = method.get("data") == "teacher" or ("regression" in method and not method.get("teacher_samples_file"))
    if "num_teacher_samples" in method and made:
        return [f"method.num_teacher_samples={n}", f"method.teacher_sample_batch={n}", "method.teacher_sampler_steps=1"]
    return []


def lpips_fallback(method: DictConfig, device: torch.device) -> tuple[list[str], str]:
    """(override, note) replacing an LPIPS distance by L2 where LPIPS cannot load on this machine."""
    from sidbench.methods.baselines.distance import LPIPSUnavailableError, load_lpips

    for key in ("distance", "regression.distance"):
        if OmegaConf.select(method, key) == "lpips":
            try:
                load_lpips(str(method.get("lpips_net") or "vgg"), device)
            except LPIPSUnavailableError as e:
                return [f"method.{key}=l2"], f"method.{key}=l2, not the preset's LPIPS ({e})"
    return [], ""


def precision_fallback(cfg: DictConfig, device: torch.device) -> tuple[list[str], str]:
    """(override, note) running a half-precision preset in fp32 where this CPU would emulate it."""
    from sidbench.trainer.context import emulated_precision_warning

    precision = str(cfg.trainer.precision)
    if emulated_precision_warning(precision, device) is None:
        return [], ""
    return ["trainer.precision=fp32"], f"trainer.precision=fp32, not the preset's {precision} (no native {precision} kernels on this CPU)"


def compose_row(name: str, dataset: str, device: torch.device, batch_gpu: int | None,
                images: Path, extra: Sequence[str] = ()) -> tuple[DictConfig, list[str], list[str]]:
    """(config, its overrides, notes): `sidbench run`'s config for the row, checked as it checks it.
    `images` is an empty folder named as the training images of methods that read them (the check
    wants a dataset; `measure` serves random images instead, and nothing opens the folder). `extra`
    overrides come last."""
    from sidbench.config import compose
    from sidbench.methods import METHODS as REGISTRY
    from sidbench.schema import validate_run_config

    overrides = base_overrides(name, dataset, str(device))
    cfg = compose(overrides)
    micro = batch_gpu or int(cfg.trainer.batch_gpu or cfg.trainer.batch)
    fallback, note = lpips_fallback(cfg.method, device)
    half, half_note = precision_fallback(cfg, device)
    overrides += [f"trainer.batch={micro}", f"trainer.batch_gpu={micro}", *precompute_overrides(cfg.method, micro), *fallback, *half]
    if REGISTRY.get(str(cfg.method.name)).uses_real_data(cfg.method):
        overrides.append(f"dataset.images.path={images}")
    overrides += list(extra)
    cfg = compose(overrides)
    validate_run_config(cfg)
    notes = [n for n in (note, half_note) if n]
    if precompute_overrides(cfg.method, micro):
        notes.append(f"precomputation excluded from timing and counts (teacher samples or pairs: {micro}, 1 Heun step)")
    return cfg, overrides, notes


# -- what a run would load ---------------------------------------------------------------------------
def random_teacher(cfg: DictConfig, device: torch.device):  # noqa: ANN201 - sidbench.teachers.teacher.Teacher
    """The dataset card's network with random weights, frozen as `load_teacher` freezes a loaded one."""
    from sidbench.teachers.networks import build_edm_network
    from sidbench.teachers.teacher import Teacher

    constructor = OmegaConf.to_container(cfg.dataset.teacher.constructor, resolve=True)
    torch.manual_seed(int(cfg.trainer.seed))
    net = build_edm_network(constructor).to(device).eval().requires_grad_(False)
    # a declared digest: teacher samples' cache key, without hashing the random weights
    info = {"sha256": f"random-weights-seed{cfg.trainer.seed}", "sampler_steps": int(cfg.dataset.teacher.sampler_steps)}
    return Teacher(net=net, constructor=constructor, source=f"random weights ({cfg.dataset.name} card)", info=info)


def random_images(shape: Sequence[int], label_dim: int, count: int = 50000):  # noqa: ANN201 - RealImages
    """Uniform random images in [-1, 1] and classes, served as `open_real_images` serves a dataset."""
    from sidbench.data.real import RealImages

    classes = torch.randint(label_dim, (count,)) if label_dim else None
    return RealImages(count, lambda index: torch.rand(len(index), *shape) * 2 - 1, classes, label_dim, "random images")


# -- memory --------------------------------------------------------------------------------------------
def reset_peak(device: torch.device) -> str:
    """Start a peak-memory window; returns what the peak will measure."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return "CUDA max_memory_allocated"
    try:  # Linux: "5" resets the peak RSS that getrusage reports
        Path("/proc/self/clear_refs").write_text("5")
        return "CPU process peak RSS (getrusage), from the timed iterations' start"
    except OSError:
        return "CPU process peak RSS (getrusage), over the process's lifetime"


def read_peak(device: torch.device) -> tuple[float, float | None]:
    """(peak GiB, CUDA reserved GiB or None)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GIB, None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- one row --------------------------------------------------------------------------------------------
def make_trainer(cfg: DictConfig, teacher: Any, device: torch.device, run_dir: Path | None = None) -> tuple[Any, str]:
    """(the method's `Trainer`, built as `sidbench run` builds it, put in its last stage; that stage's
    description, empty for a one-stage method). Precomputation is done, as `Trainer.train` does it."""
    from sidbench.labels import label_frequencies, label_sampler
    from sidbench.methods import METHODS as REGISTRY
    from sidbench.trainer.context import configure_math
    from sidbench.trainer.loop import Trainer

    configure_math(cfg.trainer)
    torch.manual_seed(int(cfg.trainer.seed))
    method = REGISTRY.get(str(cfg.method.name))(teacher, cfg.method, device, cfg)
    sampler = None
    if teacher.label_dim:
        freq = label_frequencies(teacher.label_dim, cfg.dataset.get("label_freq"), cfg.dataset)
        sampler = label_sampler(teacher.label_dim, freq, device)
    real = random_images(teacher.shape, teacher.label_dim) if method.uses_real_data(cfg.method) else None
    # The trainer writes into its run folder only when it checkpoints or logs, which nothing here does.
    trainer = Trainer(cfg.trainer, method, run_dir or Path(tempfile.gettempdir()) / "real_size-run", device,
                      label_sampler=sampler, real_data=real)
    with trainer.ctx.precompute():  # as `Trainer.train` does before the first iteration
        method.prepare(trainer.ctx)
    p, last = trainer.progress, trainer.stages[-1]
    if last.unit == "kimg":
        p.images_seen = math.ceil(last.start * 1000)
    else:
        p.iteration = int(last.start)
    trainer._enter_stages()  # noqa: SLF001 - the trainer's own stage entry (resets, enter_stage, counter)
    stage = f"{last.name} (last of {len(trainer.stages)})" if len(trainer.stages) > 1 else ""
    return trainer, stage


def stepper(trainer: Any, batch: int) -> Callable[[], None]:
    """One iteration of `trainer` with its progress advanced as `Trainer.train` advances it."""
    p = trainer.progress

    def step() -> None:
        trainer.step()
        p.iteration += 1
        p.images_seen += batch

    return step


#: the optimiser step count a timed iteration is given (`as_mid_run`)
MID_RUN_STEP = 1000


def as_mid_run(trainer: Any, step: int = MID_RUN_STEP) -> None:
    """Give every optimiser the step count of a run `step` steps in, after its first iteration
    made its states. A timed iteration then costs what a run's iterations cost, not its first
    few: RAdam (consistency distillation, ECT) updates without its rectifier for 5 steps, and
    that update is cheaper (CPU, one CIFAR-10 network, one thread: 190 ms a step, against 240-260
    with for-each kernels and 400-470 one tensor at a time once rectified). Adam's
    cost does not depend on the count; its bias correction does, which timing does not read."""
    for opt in trainer.method.optimizers().values():
        for state in opt.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"].fill_(step)
            elif "step" in state:
                state["step"] = step


def measure(row: Row, cfg: DictConfig, teacher: Any, device: torch.device, warmup: int, iterations: int) -> None:
    """Build the method and its trainer as `sidbench run` does and time `iterations` of its last stage."""
    trainer, row.stage = make_trainer(cfg, teacher, device)
    step = stepper(trainer, row.micro_batch)
    try:
        for _ in range(warmup):
            step()
        as_mid_run(trainer)  # after the warm-up made the optimisers' states
        trainer.counter.take()  # the warm-up's and the precomputation's compute: not this row's
        row.peak_memory_kind = reset_peak(device)
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        synchronize(device)
        seconds = time.perf_counter() - start
        cost = trainer.counter.take()
        row.peak_memory_gib, row.peak_reserved_gib = read_peak(device)
        with torch.no_grad():  # what a run's evaluation samples: the EMA generator, one micro-batch
            z = torch.randn(row.micro_batch, *teacher.shape, device=device)
            row.sample_shape = list(trainer.sample_fn(z, trainer.ctx.labels(row.micro_batch)).shape)
    finally:
        trainer.counter.detach()  # the shared teacher keeps no hook of this row's counter
    row.iterations = iterations
    row.seconds_per_iteration = seconds / iterations
    row.images_per_second = row.micro_batch / row.seconds_per_iteration
    row.passes_per_iteration = cost.passes / iterations
    row.teacher_passes_per_iteration = cost.teacher_passes / iterations
    row.flops_per_iteration = cost.flops / iterations
    row.flops_per_second = row.flops_per_iteration / row.seconds_per_iteration
    row.status = "measured"


def run_row(row: Row, device: torch.device, batch_gpu: int | None, warmup: int, iterations: int,
            teachers: dict[str, Any], images: Path) -> None:
    """Fill `row`; a setting that cannot run, or memory that runs out, is recorded, not raised."""
    from sidbench.config import ConfigError

    start = time.perf_counter()
    try:
        cfg, row.overrides, notes = compose_row(row.method, row.dataset, device, batch_gpu, images)
        row.precision, row.micro_batch = str(cfg.trainer.precision), int(cfg.trainer.batch_gpu)
        row.notes = "; ".join(notes)
        if row.dataset not in teachers:
            teachers.clear()  # one dataset's teacher in memory at a time
            teachers[row.dataset] = random_teacher(cfg, device)
        measure(row, cfg, teachers[row.dataset], device, warmup, iterations)
    except ConfigError as e:
        row.status = f"skipped: {e}"
    except torch.cuda.OutOfMemoryError as e:
        row.status = f"not measured: out of GPU memory ({str(e).splitlines()[0]})"
    except Exception as e:  # noqa: BLE001 - one broken row must not cost the rest of the matrix
        row.status = f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.row_seconds = time.perf_counter() - start


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder that is also the cache: teacher samples made here do not go to the user's."""
    previous = os.environ.get("SIDBENCH_CACHE")
    with tempfile.TemporaryDirectory(prefix="real_size-") as scratch:
        os.environ["SIDBENCH_CACHE"] = scratch
        try:
            yield Path(scratch)
        finally:
            if previous is None:
                os.environ.pop("SIDBENCH_CACHE", None)
            else:
                os.environ["SIDBENCH_CACHE"] = previous


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what `platform` knows): CPU timings and
    digits curves differ between an Intel and an AMD machine of the same core count."""
    import platform

    with contextlib.suppress(OSError):  # not Linux: platform's answer below
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({cpu_model()}, {os.cpu_count()}-core {platform.machine()}, {torch.get_num_threads()} torch threads)"


# -- output ---------------------------------------------------------------------------------------------
def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def table(rows: Sequence[Row]) -> str:
    head = ("| method | dataset | precision | micro-batch | timed iterations | s / iteration | images/s | passes / iteration "
            "(per image) | FLOPs / iteration | FLOP/s | peak memory | notes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.status != "measured":
            cells = [r.method, r.dataset, r.precision, str(r.micro_batch or ""), "", "", "", "", "", "", "", r.status]
        else:
            per_image = r.passes_per_iteration / r.micro_batch
            memory = f"{r.peak_memory_gib:.2f} GiB ({'CUDA allocated' if r.peak_reserved_gib is not None else 'CPU peak RSS'})"
            notes = "; ".join(filter(None, [f"stage {r.stage}" if r.stage else "", r.notes]))
            cells = [r.method, r.dataset, r.precision, str(r.micro_batch), str(r.iterations), f"{r.seconds_per_iteration:.3g}",
                     f"{r.images_per_second:.3g}", f"{r.passes_per_iteration:.4g} ({per_image:.3g})", _si(r.flops_per_iteration),
                     _si(r.flops_per_second), memory, notes]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def report(rows: Sequence[Row], header: str) -> str:
    return f"{header}\n\n{table(rows)}\n"


def progress_line(row: Row) -> str:
    measured = f", {row.seconds_per_iteration:.3g} s/iteration, {row.peak_memory_gib:.2f} GiB" if row.status == "measured" else ""
    return f"{row.method} {row.dataset}: {row.status}{measured} ({row.row_seconds or 0:.0f} s)"


def measure_matrix(methods: Sequence[str], datasets: Sequence[str], device: torch.device, *, batch_gpu: int | None = None,
                   warmup: int = 3, iterations: int = 5, out: Path | None = None, stop_after: float | None = None,
                   header: str = "") -> list[Row]:
    """Every (dataset, method) row in that order; each row is written to `out` as soon as it is measured."""
    date = dt.date.today().isoformat()
    rows = [Row(m, d, device=device_name(device), date=date) for d in datasets for m in methods]
    jsonl = out.with_suffix(".jsonl") if out is not None else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report(rows, header))
        jsonl.write_text("")
    begin = time.perf_counter()
    teachers: dict[str, Any] = {}
    with scratch_folder() as scratch:
        images = scratch / "random-images"
        images.mkdir()
        for row in rows:
            if stop_after is not None and time.perf_counter() - begin > stop_after:
                row.status = f"not measured: --stop-after {stop_after:g} s reached before this row"
            else:
                run_row(row, device, batch_gpu, warmup, iterations, teachers, images)
            print(progress_line(row), file=sys.stderr, flush=True)
            if out is not None:
                out.write_text(report(rows, header))
                with open(jsonl, "a") as f:
                    f.write(json.dumps(asdict(row)) + "\n")
    teachers.clear()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="default: every registered method, then the variants " + " ".join(VARIANTS))
    parser.add_argument("--datasets", nargs="+", default=DATASETS, help=f"default: {' '.join(DATASETS)}")
    parser.add_argument("--batch-gpu", type=int, default=None, help="micro-batch of every row (default: each preset's trainer.batch_gpu)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (default 5: one DMD2 TTUR period)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", type=Path, default=None, help="Markdown table here, JSON lines beside it (.jsonl)")
    parser.add_argument("--stop-after", type=float, default=None, help="start no row after this many seconds")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    from sidbench.distributed import pick_device

    device = pick_device(args.device)
    header = (f"{device_name(device)}, torch {torch.__version__}, {dt.date.today().isoformat()}: "
              f"`python benchmarks/real_size.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    rows = measure_matrix(args.methods or default_methods(), args.datasets, device, batch_gpu=args.batch_gpu, warmup=args.warmup,
                          iterations=args.iterations, out=args.out, stop_after=args.stop_after, header=header)
    print(report(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
