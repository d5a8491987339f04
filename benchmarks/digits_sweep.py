"""Run several `sidbench run` settings side by side and tabulate their curves against the teacher.

    python benchmarks/digits_sweep.py --parallel 4 --common "trainer.kimg=128" \\
        base="" rampup0.1="trainer.ema_rampup=0.1" lr2e-4="method.lr=2e-4"

Each NAME=OVERRIDES argument is one run (`sidbench run run_name=NAME <common> <overrides>`, MLflow
off, the curve read back from the run's metrics.jsonl). The table gives, per run: the metric at
`--at` kimg (the evaluation nearest to it), the last value, its ratio to the teacher, and the first
kimg at which the run came within 1.5x of the teacher and matched it (all on the curve's images);
then the end, scored on more images (`eval.final_samples`; 20000 on digits), against the teacher
at that size. The curve's 2000 images rank settings less surely than the end's 20000
(docs/metrics.md, "The digits metrics"). This is how the digits
default's schedule was chosen (README, "What the default run shows"); on a GPU many runs share one
card, since each is too small to fill it.

`--deadline` seconds after the start, runs still going are stopped (SIGINT, then SIGKILL) and the
table is made from what they logged, so the script always ends with its table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def parse_runs(specs: list[str]) -> dict[str, list[str]]:
    runs: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, overrides = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"{spec!r}: give each run as NAME=OVERRIDES (OVERRIDES may be empty: NAME=)")
        runs[name] = shlex.split(overrides)
    return runs


def read_curve(path: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(the run's logged lines, the teacher's values) from a metrics.jsonl; the last line of a kimg wins."""
    lines: dict[float, dict[str, Any]] = {}
    teacher: dict[str, float] = {}
    if path.is_file():
        for raw in path.read_text().splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            teacher |= {k.removeprefix("teacher/"): v for k, v in line.items() if k.startswith("teacher/")}
            lines[line["kimg"]] = {**lines.get(line["kimg"], {}), **line}
    return [lines[k] for k in sorted(lines)], teacher


def summarize(name: str, path: Path, metric: str, at: list[float]) -> dict[str, Any]:
    curve, teacher = read_curve(path)
    evals = [(d["kimg"], d[f"eval/{metric}"]) for d in curve if f"eval/{metric}" in d]
    ref = teacher.get(metric)
    out: dict[str, Any] = {"name": name, "teacher": ref, "curve": evals}
    if not evals:
        return out
    out["kimg"], out["last"] = evals[-1]
    out["seconds"] = curve[-1].get("seconds")
    out["sec_per_kimg"] = curve[-1].get("sec_per_kimg")
    nearest = {k: min(evals, key=lambda e: abs(e[0] - k)) for k in at}
    # "-" where the run has no evaluation within 10% of k (it stopped earlier, say)
    out["at"] = {k: v if abs(kimg - k) <= 0.1 * k else None for k, (kimg, v) in nearest.items()}
    if ref:
        out["ratio"] = out["last"] / ref
        out["kimg_to_1.5x"] = next((kimg for kimg, v in evals if v <= 1.5 * ref), None)
        out["kimg_to_teacher"] = next((kimg for kimg, v in evals if v <= ref), None)
    ends = [d[f"eval/{metric}_final"] for d in curve if f"eval/{metric}_final" in d]
    if ends:
        out["final"] = ends[-1]
        if teacher.get(f"{metric}_final"):
            out["final_ratio"] = ends[-1] / teacher[f"{metric}_final"]
    return out


def table(rows: list[dict[str, Any]], metric: str, at: list[float]) -> str:
    def fmt(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    head = (f"| run | {' | '.join(f'{metric} @ {k:g} kimg' for k in at)} | last kimg | last {metric} | x teacher "
            f"| kimg to 1.5x | kimg to teacher | s/kimg | end {metric} | x teacher |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['name']} | {' | '.join(fmt(r.get('at', {}).get(k)) for k in at)} | {fmt(r.get('kimg'), '.1f')} "
                     f"| {fmt(r.get('last'))} | {fmt(r.get('ratio'), '.3f')} | {fmt(r.get('kimg_to_1.5x'), '.0f')} "
                     f"| {fmt(r.get('kimg_to_teacher'), '.0f')} | {fmt(r.get('sec_per_kimg'), '.2f')} "
                     f"| {fmt(r.get('final'))} | {fmt(r.get('final_ratio'), '.3f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=OVERRIDES, one per run")
    parser.add_argument("--common", default="", help="overrides every run gets (before its own)")
    parser.add_argument("--out", default="runs/sweep", help="output_root of the runs")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=None, help="seconds; then stop what still runs and tabulate")
    parser.add_argument("--metric", default="fd_pixel")
    parser.add_argument("--dataset", default="digits", help="the runs' dataset (their folder under --out)")
    parser.add_argument("--at", default="40,80,104", help="kimg at which to read each curve")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args(argv)
    runs = parse_runs(args.runs)
    at = [float(k) for k in args.at.split(",") if k]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = shlex.split(args.common)
    start = time.monotonic()
    pending = list(runs.items())
    active: dict[str, subprocess.Popen] = {}
    while pending or active:
        while pending and len(active) < args.parallel:
            name, overrides = pending.pop(0)
            cmd = [sys.executable, "-m", "sidbench.cli", "run", f"run_name={name}", f"output_root={out}",
                   "tracking.enabled=false", *common, *overrides]
            with open(out / f"{name}.log", "w") as log:  # the child keeps its own copy of the handle
                log.write(shlex.join(cmd) + "\n")
                log.flush()
                active[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for name, proc in list(active.items()):
            if proc.poll() is not None:
                print(f"{name}: exit {proc.returncode} after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
                del active[name]
        if args.deadline and time.monotonic() - start > args.deadline:
            for name, proc in active.items():
                proc.send_signal(signal.SIGINT)
            time.sleep(5)
            for name, proc in active.items():
                if proc.poll() is None:
                    proc.kill()
                print(f"{name}: stopped at the deadline", file=sys.stderr, flush=True)
            active.clear()
            pending.clear()
        time.sleep(0.5)
    rows = [summarize(name, out / args.dataset / name / "metrics.jsonl", args.metric, at) for name in runs]
    print(table(rows, args.metric, at))
    if args.json:
        Path(args.json).write_text(json.dumps({"common": common, "runs": {n: r for n, r in zip(runs, rows)},
                                               "overrides": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
