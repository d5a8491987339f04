"""The `sidbench` command line: the parser and one small handler per subcommand; `run` (training,
torchrun) and `score` (`fid`, `stats`) hold the two that do more. Subcommands take Hydra overrides
(`key=value`)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

console = Console(stderr=True)

RUN_HELP = """Distil a teacher into a one-step generator.

  sidbench run                                 # SiD on the shipped digits teacher, CPU, minutes
  sidbench run method=sid dataset=ffhq64       # the published FFHQ 64 setting (GPU, downloads the teacher)
  sidbench run dataset=cifar10 dataset.teacher.path=/data/edm-cifar10-32x32-uncond-vp.pkl
  sidbench run trainer.kimg=200 method.alpha=0.5 trainer.precision=bf16
  sidbench run resume=runs/digits/sid-20260101-120000      # or resume=<MLflow run id>
  sidbench run dataset=imagenet64 dry_run=true             # print the resolved settings, load nothing

Groups: method/, dataset/, trainer/, eval/ (see `sidbench list`); any key can be overridden."""


def _overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from sidbench.cli.run import run_command

    return run_command(_overrides(args))


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sidbench.config import group_config, group_options
    from sidbench.eval import METRICS  # declares the built-ins without importing them (nor torch)
    from sidbench.eval.published_generators import load_catalogue
    from sidbench.methods import METHODS  # declares the built-ins without importing them (nor torch)
    from sidbench.samplers import SAMPLERS  # the same, for the samplers a recipe names

    methods = Table("method", "description", title="methods (method=...)")
    for name, desc in METHODS.describe().items():
        methods.add_row(name, desc)
    samplers = Table("sampler", "description", title='samplers (a sampling recipe\'s "sampler")')
    for name, desc in SAMPLERS.describe().items():
        samplers.add_row(name, desc)
    datasets = Table("dataset", "description", "teacher", "metric", title="datasets and their teachers (dataset=...)")
    for name in group_options("dataset"):
        card = group_config("dataset", name)
        t = card.teacher
        where = f"{t.name} ({'local file' if t.get('path') else 'shipped' if t.get('builtin') else 'downloaded once'})"
        datasets.add_row(name, str(card.get("description", "")), where, str(card.get("metric", "")))
    metrics = Table("metric", "description", title="metrics (eval.metric=..., a dataset card's metric)")
    for name, desc in METRICS.describe().items():
        metrics.add_row(name, desc)
    released = Table(title="generators released by their authors (sidbench fid published=<name>)",
                     caption="paper's FID: the authors' figure, for context (* their best SiDA/SiD²A run on the "
                             "dataset); `sidbench fid` measures the file here")
    for col in ("name", "generator", "NFE", "paper's FID"):
        released.add_column(col, no_wrap=col != "generator")
    released.add_column("address", overflow="fold")
    for g in load_catalogue().values():
        paper = "" if g.paper_fid is None else f"{g.paper_fid:g}{'' if g.paper_fid_of == 'generator' else '*'}"
        released.add_row(g.name, g.label, str(g.nfe), paper, g.url)
    out = Console()
    out.print(methods)
    out.print(samplers)
    out.print(datasets)
    out.print(metrics)
    out.print(released)
    return 0


def cmd_teacher_train(args: argparse.Namespace) -> int:
    from sidbench.config import compose
    from sidbench.teachers.train import train_teacher

    cfg = compose(_overrides(args))
    command = " ".join(["sidbench teacher train", *args.overrides] + (["--out", args.out] if args.out else []))
    path = train_teacher(cfg, out=args.out, command=command)
    console.print(f"teacher written to {path}")
    return 0


def cmd_teacher_measure(args: argparse.Namespace) -> int:
    from sidbench.config import compose
    from sidbench.teachers.train import measure_shipped_teacher

    cfg = compose(_overrides(args))
    command = " ".join(["sidbench teacher measure", *args.overrides] + (["--file", args.file] if args.file else []))
    path = measure_shipped_teacher(cfg, path=args.file, command=command)
    console.print(f"measurements written to {path} and the card.json beside it")
    return 0


def cmd_teacher_sample(args: argparse.Namespace) -> int:
    from sidbench.config import compose
    from sidbench.teachers.sample_cli import sample_teacher

    cfg = compose(_overrides(args))
    path = sample_teacher(cfg, out=args.out, num=args.num, batch=args.batch, seed=args.seed, steps=args.steps)
    console.print(f"samples written to {path}")
    return 0


FID_HELP = """Score images, a saved generator or the teacher (FID, or the offline metric on digits).

  sidbench fid runs/cifar10/sid-20260101-120000                 # a run folder (its generator.safetensors)
  sidbench fid runs/ffhq64/sid-x/generator.safetensors --num 50000
  sidbench fid teacher dataset=cifar10                          # the teacher's Heun sampler; kept in MLflow as
                                                                #   the teacher's reference line for runs
  sidbench fid published=sid-cifar10                            # a generator released by its authors (see
                                                                #   `sidbench list`): downloaded once, loaded
                                                                #   safely, sampled as they sample it; kept
                                                                #   in MLflow as a published_generator run
  sidbench fid samples/ --ref ffhq64                            # a folder, .npz or zip of images
  sidbench fid samples.npz --ref my-stats.npz --mode clean      # statistics from `sidbench stats`
  sidbench fid runs/digits/sid-x                                # digits: fd_pixel (no Inception reference)

Generated images: eval.final_samples of them by default, labels i mod num_classes, seed eval.seed.
The reference defaults to the dataset's (dataset.ref_stats). The last line of standard output is
machine-readable: `<metric> <value>`, e.g. `fid 2.3451` (eval.metric=precision_recall:
`precision <p> recall <r>`)."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of images or a batch size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def cmd_fid(args: argparse.Namespace) -> int:
    from sidbench.cli.score import run_fid

    result = run_fid(args.source, _overrides(args), ref=args.ref, mode=args.mode, num=args.num, batch=args.batch,
                     device=args.device, inception=args.inception, console=console)
    print(" ".join(f"{k} {v:.6g}" for k, v in (result.values or {result.metric: result.value}).items()), flush=True)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from sidbench.cli.score import stats_command, stats_for_dataset
    from sidbench.config import ConfigError

    overrides = _overrides(args)
    options = dict(mode=args.mode, num_samples=args.num, batch_size=args.batch, device=args.device,
                   inception_path=args.inception, console=console)
    if args.metric == "fid" and not overrides:
        if args.out is None:
            raise ConfigError("name the FID statistics file to write: --out FILE.npz")
        path = stats_command(args.source, args.out, **options)
    else:
        path = stats_for_dataset(args.source, overrides, metric=args.metric, out=args.out, weights=args.weights, **options)
    print(f"stats {path}", flush=True)
    return 0


STATS_HELP = """Make a metric's reference from real images.

  sidbench stats ffhq-64x64.zip --out my-ffhq.npz                                # FID statistics (EDM's format)
  sidbench stats ffhq-64x64.zip dataset=ffhq64 --metric fd_dinov2                # FD-DINOv2 statistics
  sidbench stats ffhq-64x64.zip dataset=ffhq64 --metric precision_recall --num 50000   # VGG16 features

Without --out, an FD-DINOv2 or precision/recall reference goes where runs on the dataset look for it:
eval.refs.<metric>, else <cache>/refs/<dataset>-<metric>.npz. The last line of standard output is
`stats <path written>`."""


DATASET_HELP = """Make an EDM dataset zip of training images (for dataset.images.path; docs/data.md).

  sidbench dataset cifar10 --out data/cifar10-32x32.zip                    # through torchvision's download
  sidbench dataset photos/ --out data/mine-64x64.zip --resolution 64       # any image folder
  sidbench dataset photos/ --out data/mine-64x64.zip --resolution 64 --labels-from-folders

A folder's images are centre-cropped to a square and resized (Lanczos) to --resolution; with
--labels-from-folders each image's class is its first-level sub-folder (sorted). The last line of
standard output is `dataset <path written> <images>`."""


def cmd_dataset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sidbench.config import ConfigError
    from sidbench.data.make_dataset import cifar10_images, folder_images, write_edm_zip

    if args.source == "cifar10":
        images = cifar10_images(args.download_dir or Path(args.out).parent / "cifar10-download")
    elif Path(args.source).is_dir():
        if args.resolution is None:
            raise ConfigError(f"give the images' size: sidbench dataset {args.source} --resolution <pixels> ...")
        images = folder_images(args.source, args.resolution, labels_from_folders=args.labels_from_folders,
                               channels=args.channels)
    else:
        raise ConfigError(f"{args.source} is neither `cifar10` nor a folder of images")
    path, count = write_edm_zip(args.out, images)
    console.print(f"wrote {count:,} images to {path}; train on them with dataset.images.path={path}")
    print(f"dataset {path} {count}", flush=True)
    return 0


BENCH_HELP = """Run every (method, dataset, seed) cell under one budget: a Hydra multirun of `sidbench run`s.

  sidbench bench methods=[sid,dmd2] datasets=[digits] seeds=3 budget.unit=flops budget.value=2e12
  sidbench bench datasets=[cifar10,ffhq64] seeds=1                 # every method, each card's budget
  sidbench bench methods=[dmd2] 'overrides.dmd2=[method.gan.enabled=true]'   # per-method run overrides
  sidbench bench datasets=[cifar10] 'overrides.cifar10=[dataset.images.path=/data/cifar10.zip]'   # per dataset
  sidbench bench ... hydra/launcher=joblib hydra.launcher.n_jobs=2   # cells in parallel on this machine
  sidbench bench ... hydra/launcher=submitit_slurm hydra.launcher.partition=gpu   # on Slurm (see README)
  sidbench bench ... --dry-run                                       # the cells and their state; runs nothing

Bench keys (sidbench/conf/bench.yaml): methods, datasets, seeds, id, budget.unit, budget.value,
points.* (the evaluation fractions), overrides.<method or dataset>. Any other key=value is a run override for
every cell (e.g. trainer.batch=64); hydra... keys go to Hydra. The same command again skips finished
cells (found in MLflow by the bench id and each cell's config hash) and resumes interrupted ones."""


def _table_console() -> Console:
    """The error console, wide when it is a log file: a bench's or a study's table has ten columns,
    which rich would squeeze into 80 and cut every value of."""
    return console if console.is_terminal else Console(stderr=True, width=220)


def cmd_bench(args: argparse.Namespace) -> int:
    from sidbench.harness.bench import run_bench

    return run_bench(_overrides(args), _table_console(), dry_run=args.dry_run)


TUNE_HELP = """Tune a method's settings: an Optuna study of ordinary `sidbench run`s at one budget (docs/tuning.md).

  sidbench tune method=dmd2 dataset=digits trials=12 budget.unit=flops budget.value=2e12 seed=0
  sidbench tune method=sid ... objective=final                   # the final metric, not the log-area of the curve
  sidbench tune method=sid ... pruner=median                     # stop trials below the median at evaluation points
  sidbench tune method=sid ... space.method.lr=log(1e-5,1e-3) space.method.alpha=null   # change the declared ranges
  sidbench tune method=sid ... parallel=2 hydra/launcher=joblib  # two trials at once on this machine
  sidbench tune method=sid ... storage=postgresql://host/optuna hydra/launcher=submitit_slurm   # on Slurm
  sidbench tune method=sid ... --dry-run                         # the study and its search space; runs nothing

The study (name: study=, default <method>-<dataset>-<budget>-s<seed>) lives in storage= (default
sqlite beside the MLflow store). The same command again resumes an interrupted study, or adds
`trials` more to a finished one. It ends with <output_root>/tune/<study>/best.yaml, a preset that
`sidbench run preset_file=<it>` takes, and a table of the trials. Any other key=value is a run
override for every trial; hydra... keys go to Hydra (the trials' launcher)."""


def cmd_tune(args: argparse.Namespace) -> int:
    from sidbench.harness.tune import run_tune

    return run_tune(_overrides(args), _table_console(), dry_run=args.dry_run)


LEADERBOARD_HELP = """Build the leaderboard from MLflow: leaderboard.csv, plots and a table.

  sidbench leaderboard                                  # every experiment of the store -> runs/leaderboard/
  sidbench leaderboard --bench digits-flops4e12 --out results/
  sidbench leaderboard --bench digits-flops4e12 --bench digits-flops4e12-tuned --out results/
  sidbench leaderboard --experiment digits tracking.uri=http://mlflow.example:5000

Only finished runs count. Published numbers (the papers') are shown apart: their own CSV and table; so are
the authors' released generators measured here (`sidbench fid published=<name>`)."""


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console as RichConsole

    from sidbench.config import compose
    from sidbench.harness.leaderboard import build_leaderboard, print_leaderboard
    from sidbench.tracking import tracking_uri

    cfg = compose(_overrides(args))
    out = Path(args.out) if args.out else Path(str(cfg.output_root)) / "leaderboard"
    board = build_leaderboard(tracking_uri(cfg), out, experiments=args.experiment or None, bench=args.bench or None)
    # piped to a file or a CI log, rich would wrap the 15 columns into 80; keep one row a line
    print_leaderboard(board, RichConsole() if sys.stdout.isatty() else RichConsole(width=220))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from sidbench.config import compose
    from sidbench.harness.ui import check_port, exec_serve, mark_experiments
    from sidbench.tracking import tracking_uri

    if args.port:
        check_port(args.port)  # before the store is opened and the server started
    uri = tracking_uri(compose(_overrides(args)))
    return exec_serve(uri, args.port, mark_experiments(uri))  # replaces this process with a lean one


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidbench", description="Benchmark suite for one-step distillation of EDM diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="distil a teacher (default: SiD on the shipped digits teacher)",
                       description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. method=sid dataset=ffhq64")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="list methods, samplers, datasets and teachers, metrics and released generators")
    p.set_defaults(func=cmd_list)

    teacher = sub.add_parser("teacher", help="train, measure or sample a teacher")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True, metavar="ACTION")
    p = tsub.add_parser("train", help="train the small offline teacher (dataset=digits or digits-cond)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", default=None, help="output file (default: the package's builtin teacher file)")
    p.set_defaults(func=cmd_teacher_train)
    p = tsub.add_parser("measure", help="measure a digits teacher's own distances again at a run's evaluation and final "
                        "sizes and store them with its weights (dataset=digits or digits-cond)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--file", default=None, help="the teacher file (default: the package's builtin teacher file)")
    p.set_defaults(func=cmd_teacher_measure)
    p = tsub.add_parser("sample", help="draw images from a teacher with the Heun sampler (PNG folder or .npz)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", required=True, help="a folder (PNGs) or a file ending in .npz")
    p.add_argument("--num", type=positive_int, default=50000)
    p.add_argument("--batch", type=positive_int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="Heun steps (default: the card's, 18 or 40)")
    p.set_defaults(func=cmd_teacher_sample)

    from sidbench.eval.protocol import DEFAULT_BATCH_SIZE, FID_MODES

    p = sub.add_parser("fid", help="FID of images, a saved generator or the teacher (fd_pixel/fd_digits on digits)",
                       description=FID_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE",
                   help="a folder, .npz or zip of images; a generator.safetensors or run folder; the word `teacher`; "
                        "or published=<name>, a released generator (`sidbench list`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. dataset=ffhq64")
    p.add_argument("--ref", default=None, help="reference statistics: a dataset key, an address or an .npz "
                                               "(default: the dataset's; given, the metric is FID)")
    p.add_argument("--mode", choices=FID_MODES, default=None, help="clean-fid mode (default: eval.fid_mode, legacy_tensorflow)")
    p.add_argument("--num", type=positive_int, default=None, help="images to score (default: all files, or eval.final_samples generated)")
    p.add_argument("--batch", type=positive_int, default=None, help=f"batch size (default: eval.batch_size generated, {DEFAULT_BATCH_SIZE} files)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the config's device)")
    p.add_argument("--inception", default=None, metavar="PATH",
                   help="local Inception-v3 TorchScript file (default: eval.inception_path, $SIDBENCH_INCEPTION, the cache)")
    p.set_defaults(func=cmd_fid)

    p = sub.add_parser("stats", help="a metric's reference from real images: FID or FD-DINOv2 statistics, precision/recall features",
                       description=STATS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="a folder, zip or .npz of real images")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. dataset=ffhq64 (where the file goes)")
    p.add_argument("--metric", choices=("fid", "fd_dinov2", "precision_recall"), default="fid",
                   help="whose reference to make (default: fid)")
    p.add_argument("--out", default=None, metavar="FILE.npz",
                   help="the file to write (default for fd_dinov2 and precision_recall: where runs on the dataset look)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="local DINOv2 or VGG16 weights (default: eval.dinov2_path / eval.vgg16_path, $SIDBENCH_DINOV2 / "
                        "$SIDBENCH_VGG16, the cache)")
    p.add_argument("--mode", choices=FID_MODES, default=FID_MODES[0], help="clean-fid mode (FIDs must use the same)")
    p.add_argument("--num", type=positive_int, default=None, help="use the first N images (default: all)")
    p.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument("--inception", default=None, metavar="PATH", help="local Inception-v3 TorchScript file")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("dataset", help="make an EDM dataset zip of training images (CIFAR-10, or an image folder)",
                       description=DATASET_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="`cifar10`, or a folder of images")
    p.add_argument("--out", required=True, metavar="FILE.zip", help="the zip to write")
    p.add_argument("--resolution", type=positive_int, default=None, help="a folder's images: their size in pixels")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="a folder's images: 3 (RGB) or 1 (gray)")
    p.add_argument("--labels-from-folders", action="store_true", help="a folder's images: class = first-level sub-folder")
    p.add_argument("--download-dir", default=None, metavar="DIR",
                   help="cifar10: where torchvision keeps its download (default: beside --out)")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("bench", help="run a matrix of methods x datasets x seeds under one budget (Hydra multirun)",
                       description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="bench keys, run overrides for every cell, hydra... keys")
    p.add_argument("--dry-run", action="store_true", help="show the cells and whether each is finished, to resume or new")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tune", help="tune a method's settings: an Optuna study of runs at one budget, best.yaml at the end",
                       description=TUNE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="tune keys, space.<key>=..., run overrides, hydra... keys")
    p.add_argument("--dry-run", action="store_true", help="show the study and its search space; run nothing")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("leaderboard", help="leaderboard CSV, plots and table from the MLflow store",
                       description=LEADERBOARD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. tracking.uri=... or output_root=...")
    p.add_argument("--experiment", action="append", default=[], metavar="NAME", help="an experiment (dataset) to include; repeatable")
    p.add_argument("--bench", action="append", default=[], metavar="ID",
                   help="only the runs of this bench; repeatable (e.g. a derived and a tuned bench side by side)")
    p.add_argument("--out", default=None, metavar="DIR", help="where leaderboard.csv and the plots go (default <output_root>/leaderboard)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("ui", help="open the MLflow UI on the run store (Ctrl-C stops it)",
                       description="Serve the MLflow UI on 127.0.0.1 for the run store (tracking.uri, "
                                   "$MLFLOW_TRACKING_URI or runs/mlflow.db). Prints `ui <address>`, then "
                                   "`runs <experiment> <address>`: each experiment's runs compared in charts.")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. tracking.uri=sqlite:///x.db")
    p.add_argument("--port", type=int, default=None, help="port to serve on (default: a free one)")
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse leaves `key=value` overrides that follow an option (`fid teacher --num 8 dataset=x`)
        # unparsed; they are overrides all the same.
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except Exception as e:  # KeyboardInterrupt is no Exception: it is handled below
        # imported here, not at the top: `sidbench --help` must answer without importing torch
        import os

        from sidbench.errors import UserError, follows_another_rank
        from sidbench.trainer.interrupt import TrainingInterrupted

        rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun every rank fails alike: say it once
        if isinstance(e, TrainingInterrupted):
            if rank0:
                console.print(str(e), highlight=False, soft_wrap=True)
            return e.exit_code
        if not rank0 and follows_another_rank(e):
            return 1  # a peer died (its own error is printed) and took our collective with it
        if not isinstance(e, UserError):
            raise  # a programming error keeps its traceback
        if rank0:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        if args.command == "run":
            console.print("interrupted")
        elif args.command == "teacher" and args.teacher_command == "sample":
            console.print("interrupted; the same command resumes from the finished batches")
        else:
            console.print("interrupted")
        return 130
