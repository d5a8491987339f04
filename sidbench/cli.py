"""The `sidbench` command line. Subcommands take Hydra overrides (`key=value`)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

console = Console(stderr=True)

RUN_HELP = """Distil a teacher into a one-step generator.

  sidbench run                                 # SiD on the shipped digits teacher, CPU, minutes
  sidbench run method=sid dataset=ffhq64       # the published FFHQ 64 setting (GPU, downloads the teacher)
  sidbench run dataset=cifar10 teacher.path=/data/edm-cifar10-32x32-uncond-vp.pkl
  sidbench run trainer.kimg=200 method.alpha=0.5 trainer.precision=bf16
  sidbench run resume=runs/digits/sid-20260101-120000      # or resume=<MLflow run id>
  sidbench run dataset=imagenet64 dry_run=true             # print the resolved settings, load nothing

Groups: method/, dataset/, trainer/, eval/ (see `sidbench list`); any key can be overridden."""


def _overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from sidbench.config import compose

    overrides = _overrides(args)
    cfg = compose(overrides)
    if cfg.dry_run:
        from sidbench.run import dry_run

        print(dry_run(cfg))
        return 0
    from sidbench.run import run

    result = run(cfg)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if not k.endswith("seconds"))
    console.print(f"done: {result.run_dir} ({result.progress.kimg:.1f} kimg, {result.progress.seconds:.0f} s) {shown}")
    if result.mlflow_run_id:
        console.print(f"MLflow run {result.mlflow_run_id}; browse with `sidbench ui`")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf
    from rich.table import Table

    from sidbench.config import group_options, register_plugin_configs
    from sidbench.eval.factory import METRIC_NAMES
    from sidbench.methods import METHODS

    register_plugin_configs()
    methods = Table("method", "description", title="methods (method=...)")
    for name, desc in METHODS.describe().items():
        methods.add_row(name, desc)
    datasets = Table("dataset", "description", "teacher", "metric", title="datasets and their teachers (dataset=...)")
    from importlib.resources import files

    for name in group_options("dataset"):
        card = OmegaConf.load(str(files("sidbench.conf") / "dataset" / f"{name}.yaml"))
        t = card.teacher
        where = f"{t.name} (shipped)" if t.get("builtin") else f"{t.name} (downloaded once)"
        datasets.add_row(name, str(card.description), where, str(card.metric))
    out = Console()
    out.print(methods)
    out.print(datasets)
    out.print(f"metrics: {', '.join(METRIC_NAMES)}")
    return 0


def cmd_teacher_train(args: argparse.Namespace) -> int:
    from sidbench.config import compose
    from sidbench.teachers.train import train_teacher

    cfg = compose(_overrides(args))
    command = " ".join(["sidbench teacher train", *args.overrides] + (["--out", args.out] if args.out else []))
    path = train_teacher(cfg, out=args.out, command=command)
    console.print(f"teacher written to {path}")
    return 0


def cmd_teacher_sample(args: argparse.Namespace) -> int:
    from sidbench.config import compose
    from sidbench.teachers.sample_cli import sample_teacher

    cfg = compose(_overrides(args))
    path = sample_teacher(cfg, out=args.out, num=args.num, batch=args.batch, seed=args.seed, steps=args.steps)
    console.print(f"samples written to {path}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from sidbench.config import compose
    from sidbench.tracking import tracking_uri

    uri = tracking_uri(compose(_overrides(args)))
    console.print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port}")
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(args.port)], env=os.environ)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidbench", description="Benchmark suite for one-step distillation of EDM diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="distil a teacher (default: SiD on the shipped digits teacher)",
                       description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. method=sid dataset=ffhq64")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="list methods, datasets and teachers")
    p.set_defaults(func=cmd_list)

    teacher = sub.add_parser("teacher", help="train or sample a teacher")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True, metavar="ACTION")
    p = tsub.add_parser("train", help="train the small offline teacher (dataset=digits or digits-cond)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", default=None, help="output file (default: the package's builtin teacher file)")
    p.set_defaults(func=cmd_teacher_train)
    p = tsub.add_parser("sample", help="draw images from a teacher with the Heun sampler (PNG folder or .npz)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", required=True, help="a folder (PNGs) or a file ending in .npz")
    p.add_argument("--num", type=int, default=50000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="Heun steps (default: the card's, 18 or 40)")
    p.set_defaults(func=cmd_teacher_sample)

    p = sub.add_parser("ui", help="open the MLflow UI on the run store")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sidbench.errors import USER_ERRORS, exit_code

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return exit_code(e)
    except KeyboardInterrupt:
        console.print("interrupted; resume with resume=<run dir>")
        return 130


if __name__ == "__main__":
    sys.exit(main())
