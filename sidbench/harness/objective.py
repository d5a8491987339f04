"""What a tuning trial scores, read from its run folder's metrics.jsonl (every line the run logged,
the same lines MLflow holds): the evaluation points, the objective and the compute it counted.

The objectives, lower is better (every metric is lower-is-better):
  area   the log-metric area over the budget, the leaderboard's `log_area` (its definition:
         sidbench.harness.leaderboard.log_metric_area): the mean of ln metric over the budget,
         which rewards a curve that falls early;
  final  the final metric: `eval/<metric>_final` when logged (the larger final sample), else the
         last evaluation.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sidbench.harness.leaderboard import log_metric_area
from sidbench.run_folder import CHECKPOINT_NAME, METRICS_NAME

OBJECTIVES = ("area", "final")


def read_lines(run_dir: Path) -> list[dict]:
    """The run's logged lines, in order (a resumed run repeats the lines after its checkpoint: the
    later one of a kimg wins, as in the leaderboard's curves)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:  # a line being written as we read it
            break
    return lines


def evaluation_points(lines: list[dict], metric: str) -> pd.DataFrame:
    """The evaluations of `metric`: kimg, fraction, value, in order, one per kimg."""
    key = f"eval/{metric}"
    rows = {round(line["kimg"], 9): (line["kimg"], line.get("budget/fraction", math.nan), line[key])
            for line in lines if key in line}
    return pd.DataFrame(sorted(rows.values()), columns=["kimg", "fraction", "value"])


def final_value(lines: list[dict], metric: str) -> float:
    for key in (f"eval/{metric}_final", f"eval/{metric}"):
        values = [line[key] for line in lines if key in line]
        if values:
            return float(values[-1])
    return math.nan


def objective_value(lines: list[dict], metric: str, objective: str) -> float:
    """The trial's score (NaN when it cannot be computed: no evaluation, a non-positive metric)."""
    if objective == "final":
        return final_value(lines, metric)
    return log_metric_area(evaluation_points(lines, metric))


def counted_flops(run_dir: Path, lines: list[dict] | None = None) -> float:
    """The FLOPs the run counted: its last logged line's, or its checkpoint's when that is later (a
    run stopped by a signal, such as a pruned trial, checkpoints an iteration it did not log)."""
    lines = read_lines(run_dir) if lines is None else lines
    logged = max((float(line["compute/flops"]) for line in lines if "compute/flops" in line), default=0.0)
    ckpt = Path(run_dir) / CHECKPOINT_NAME
    if ckpt.is_file():
        from sidbench.trainer.checkpoint import CheckpointError, load_checkpoint

        try:
            logged = max(logged, float(load_checkpoint(ckpt, mmap=True)["progress"].get("flops", 0.0)))
        except (CheckpointError, KeyError, OSError):
            pass
    return logged
