"""The leaderboard: finished runs read back from MLflow, one row per (dataset, method, settings).

Runs with equal `sidbench.settings` tags (the resolved config without the seed) and different
seeds form one row. Only runs whose MLflow status is FINISHED enter it: a running, failed or
killed run has no final metric, and its partial curve would bias the means (the ids of the runs
left out are kept in `Leaderboard.skipped`). The headline metric (the run's `eval.metric`) is
lower-is-better; of the other values, precision and recall are higher-is-better.

Every number is computed per run (per seed) from the run's evaluation points, the logged lines
that carry `eval/<metric>`, and then summarised over the seeds of a row:

- final metric: `eval/<metric>_final` (the end, on the larger final sample) when logged, else
  the last evaluation; mean, sample std (ddof=1; empty for one seed), min and max over seeds, and
  with two seeds or more the 95% confidence interval of the mean over seeds, from Student's t with
  n - 1 degrees of freedom: mean -/+ t(0.975, n - 1) std / sqrt(n) (`final_ci95_low/high`).
- the final evaluation's sample count (`final_images`: the run's `final_images` tag, or for runs
  from before it the `eval.final_samples` setting; the least over seeds) and `proxy`: true when it
  is below the 50,000 images of the published protocols (FID, FD-DINOv2, precision/recall), whose
  numbers a proxy's must not be compared with.
- every other value the runs logged (`eval.metrics`: `fd_dinov2`, `precision`, `recall`, ...) has
  a column `final_<value>`: its final value as above, mean over seeds (empty unless every seed has
  it). Precision and recall are better when higher; every other metric lower.
- metric at 25%, 50%, 100% of the budget: the first evaluation at `budget/fraction` >= target
  minus 1e-9 (always on the curve's own sample size, so the three are comparable); mean over
  seeds, empty when a seed has no such evaluation (e.g. a run stopped by `trainer.max_seconds`).
- compute to 1.5x and 1.0x the teacher: FLOPs, passes and kimg at the first evaluation with
  metric <= factor x the teacher's metric (with a relative slack of 1e-12 for the round-off of
  the product); mean over seeds, empty when any seed never got there, and the number of seeds
  that did (empty when the teacher's metric is unknown).
- log-metric area: the trapezoid rule over the points (budget/fraction, ln metric) of the
  evaluations, from fraction 0 to the last evaluation (fraction 1, or just past it: a run stops
  at the first iteration that reaches its budget). When the first evaluation is after fraction 0
  (work before training, such as DMD's regression pairs, is charged to the budget), its value is
  held back to fraction 0, since the generator has not changed before it. Over a budget of 1 this
  is the mean of ln metric over the budget: lower is better, and it rewards a curve that falls
  early; it is negative for metrics below 1. Mean over seeds.
- throughput at the end of training: images/s = 1000 * kimg / seconds and FLOP/s = FLOPs /
  seconds (training seconds only), mean over seeds.
- teacher: `teacher/<metric>` (measured) or else `teacher/<metric>_published` (the published
  figure, labelled `published` in `teacher_metric_source`, never as measured). It is the
  reference of the curve's thresholds (1.5x, 1.0x). The final metric is divided by the teacher
  at the final's own size (`teacher_metric_final`): where a run's end is scored on more images
  than its evaluations (`eval/<metric>_final`), `teacher/<metric>_final` or else the published
  figure; a Frechet distance depends on the number of images, so never the curve's teacher.

Where settings came from: `settings_source` is `published` (the paper's, for that dataset),
`derived` (adapted by hand) or `tuned:<study>` (a `sidbench tune` study's best.yaml), and
`tuning_flops` the compute its study spent (0 for the others). Runs of one method with different
sources are different rows, side by side. A tuning study's own trials are not rows.

Published reference figures (`published.csv` beside this file, from the papers) are written to
their own CSV and printed in their own table, never as rows of the measured one: they share
almost none of its columns (no curve, no compute, other sample sizes), and a reader who averages
or sorts `leaderboard.csv` cannot mix them in by accident. Both tables carry a `source` column
(`measured`, `published (arXiv:<id>)`), so the labels survive if someone concatenates them.

Generators released by their authors and measured here (`sidbench fid published=<name>`, MLflow runs
tagged `sidbench.kind=published_generator`, `sidbench.eval.published_generators`) are a third table,
`leaderboard_published_generators.csv`, source `released generator, measured here`: one number each
(metric, images, NFE, name, address; the newest measurement of each file, dataset, metric, sample
count and metric settings), neither a training run's curve nor a paper's figure.
"""
from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sidbench.tracking import all_pages, open_store

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient
    from rich.console import Console

#: Budget fractions whose metric has its own column, and the multiples of the teacher's metric
#: whose first crossing is reported.
FRACTIONS = (0.25, 0.5, 1.0)
FACTORS = (1.5, 1.0)
FRACTION_TOL = 1e-9
REACH_RTOL = 1e-12

#: Logged counters -> column names of the evaluation points.
COUNTERS = {"budget/fraction": "fraction", "kimg": "kimg", "compute/flops": "flops", "compute/passes": "passes", "seconds": "seconds"}
CURVE_COLUMNS = ["run_id", "step", "key", "value"]
POINT_COLUMNS = ["step", *COUNTERS.values(), "value"]

MEASURED = "measured"


def _pct(fraction: float) -> str:
    return f"{round(fraction * 100)}"


def _factor(factor: float) -> str:
    return f"{factor:g}x" if factor != int(factor) else f"{int(factor)}.0x"


#: where a row's settings came from (see "where settings came from" below): its own row for each
PROVENANCE_COLUMNS = ["settings_source", "tuning_flops"]
#: The published protocols' number of generated images (sidbench.eval.protocol.PROTOCOL_NUM_IMAGES).
PROTOCOL_IMAGES = 50_000
CI_LEVEL = 0.95

COLUMNS = [
    "source", "dataset", "method", "settings", *PROVENANCE_COLUMNS, "metric", "n_seeds", "seeds",
    "final_mean", "final_std", "final_min", "final_max", "final_ci95_low", "final_ci95_high", "final_vs_teacher",
    "final_images", "proxy",
    *[f"metric_at_{_pct(f)}" for f in FRACTIONS],
    *[c for k in FACTORS for c in (f"flops_to_{_factor(k)}", f"passes_to_{_factor(k)}", f"kimg_to_{_factor(k)}", f"seeds_reached_{_factor(k)}")],
    "log_area", "nfe", "images_per_s", "flops_per_s",
    "teacher", "teacher_metric", "teacher_metric_source", "teacher_metric_final", "teacher_metric_final_source",
    "code_versions", "budget", "bench", "stopped_by_time", "run_ids",
]
PUBLISHED_COLUMNS = ["source", "dataset", "method", "nfe", "metric", "value", "data"]
DATA_LEGEND = "data: DF data-free, R real data, P teacher pairs"

#: The `sidbench.kind` tags of runs that share the datasets' experiments but are not training runs.
TEACHER_MEASUREMENT = "teacher_measurement"
PUBLISHED_GENERATOR = "published_generator"  # sidbench.eval.published_generators.KIND
RELEASED = "released generator, measured here"
RELEASED_COLUMNS = ["source", "dataset", "name", "method", "nfe", "metric", "value", "num_samples", "seed",
                    "metric_settings", "generator_dataset", "address", "sha256", "code_version", "run_id"]
# What makes two measurements of a released generator the same measurement (the newest is kept).
_RELEASED_KEY = ["dataset", "name", "metric", "num_samples", "metric_settings", "sha256"]


@dataclass
class Leaderboard:
    measured: pd.DataFrame  # one row per (dataset, method, settings), COLUMNS
    published: pd.DataFrame  # reference figures from the papers, PUBLISHED_COLUMNS
    paths: list[Path] = field(default_factory=list)  # what build_leaderboard wrote
    runs: pd.DataFrame | None = None  # one row per finished run (the per-seed numbers)
    curves: pd.DataFrame | None = None  # tidy curves of those runs: run_id, step, key, value
    skipped: list[str] = field(default_factory=list)  # run ids left out (status not FINISHED)
    #: released generators measured here (RELEASED_COLUMNS), apart from both tables above
    released: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RELEASED_COLUMNS))


# -- confidence intervals over seeds --------------------------------------------------------------
def _t_central_mass(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3 and 26.7.4: a finite series in cos(theta), theta = atan(t / sqrt(dof)))."""
    theta = math.atan(t / math.sqrt(dof))
    c2, sin = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2:  # odd: 2/pi (theta + sin (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...)), up to cos^(dof-2)
        if dof == 1:
            return 2 * theta / math.pi
        term = total = math.cos(theta)
        for j in range(1, (dof - 1) // 2):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return 2 / math.pi * (theta + sin * total)
    term = total = 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), up to cos^(dof-2)
    for j in range(1, dof // 2):
        term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return sin * total


def t_quantile(level: float, dof: int) -> float:
    """The t with P(|T| <= t) = `level` (e.g. 0.95: the 0.975 quantile) for `dof` >= 1 degrees of
    freedom, by bisection on the closed-form distribution to 1e-12."""
    if dof < 1 or not 0 < level < 1:
        raise ValueError(f"need dof >= 1 and 0 < level < 1, got dof={dof}, level={level}")
    lo, hi = 0.0, 1.0
    while _t_central_mass(hi, dof) < level:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-12 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central_mass(mid, dof) < level else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """The `level` confidence interval of the mean of `values` (seeds): mean -/+ t(dof n - 1) s / sqrt(n),
    s the sample std; (NaN, NaN) with fewer than 2 values or any NaN."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or not np.isfinite(x).all():
        return math.nan, math.nan
    half = t_quantile(level, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


# -- curves: pure functions of DataFrames --------------------------------------------------------
def curve_frame(run_id: str, histories: Mapping[str, Iterable[Any]]) -> pd.DataFrame:
    """{key: [mlflow Metric, ...]} -> a tidy curve (run_id, step, key, value), sorted by step.

    A key logged twice at one step counts once, the later value: the final evaluation's line
    repeats the counters at the last step, and a resumed run repeats the lines after its checkpoint.
    """
    rows = [(run_id, int(m.step), key, float(m.value)) for key, hist in histories.items() for m in hist]
    df = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    df = df.drop_duplicates(["run_id", "step", "key"], keep="last")
    return df.sort_values(["run_id", "step", "key"], kind="stable").reset_index(drop=True)


def evaluation_points(curve: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One run's evaluations: step, fraction, kimg, flops, passes, seconds, value (of `eval/<metric>`),
    in the order of the steps. The counters are those of the same logged line."""
    key = f"eval/{metric}"
    if curve.empty or key not in set(curve["key"]):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in POINT_COLUMNS})
    once = curve.drop_duplicates(["step", "key"], keep="last")
    wide = once.pivot(index="step", columns="key", values="value").sort_index()
    ev = wide[wide[key].notna()]
    out = pd.DataFrame({"step": ev.index.astype(int)})
    for logged, name in COUNTERS.items():
        out[name] = ev[logged].to_numpy() if logged in ev else np.nan
    out["value"] = ev[key].to_numpy()
    return out


def final_metric(curve: pd.DataFrame, metric: str) -> float:
    """`eval/<metric>_final` at its last step when logged (the larger final sample), else the last
    evaluation of the curve."""
    for key in (f"eval/{metric}_final", f"eval/{metric}"):
        hit = curve[curve["key"] == key]
        if len(hit):
            return float(hit.sort_values("step", kind="stable")["value"].iloc[-1])
    return math.nan


def logged_values(curve: pd.DataFrame) -> list[str]:
    """The names of the metric values a run logged (`eval/<name>` or `eval/<name>_final`), in
    sorted order; evaluation times are no metric."""
    names = {str(k)[5:].removesuffix("_final") for k in set(curve["key"]) if str(k).startswith("eval/")}
    return sorted(n for n in names if not n.startswith("seconds"))


def metric_at_fraction(points: pd.DataFrame, target: float) -> float:
    """The first evaluation at budget fraction >= target - 1e-9 (the tolerance absorbs the
    round-off of a fraction computed as used / budget), or NaN when the curve never gets there."""
    hit = points[points["fraction"] >= target - FRACTION_TOL]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def first_reaching(points: pd.DataFrame, threshold: float) -> pd.Series | None:
    """The first evaluation with metric <= threshold (lower is better), or None."""
    if not math.isfinite(threshold):
        return None
    hit = points[points["value"] <= threshold * (1 + REACH_RTOL)]
    return hit.iloc[0] if len(hit) else None


def log_metric_area(points: pd.DataFrame) -> float:
    """Trapezoid rule over (budget fraction, ln metric), the first value held back to fraction 0
    (see the module docstring). NaN with no evaluation or a non-positive metric."""
    p = points.dropna(subset=["fraction", "value"])
    if p.empty or (p["value"] <= 0).any():
        return math.nan
    f = p["fraction"].to_numpy(dtype=float)
    y = np.log(p["value"].to_numpy(dtype=float))
    if f[0] > 0:
        f, y = np.concatenate([[0.0], f]), np.concatenate([[y[0]], y])
    if len(f) < 2:
        return math.nan
    # np.trapz was renamed trapezoid in numpy 2; the sum is the same rule on every version
    return float(np.sum((f[1:] - f[:-1]) * (y[1:] + y[:-1]) / 2))


def end_throughput(curve: pd.DataFrame) -> tuple[float, float]:
    """(images/s, FLOP/s) of training at the run's last logged line."""
    last = curve.sort_values("step", kind="stable").groupby("key")["value"].last()
    kimg, flops, seconds = (float(last.get(k, math.nan)) for k in ("kimg", "compute/flops", "seconds"))
    if not seconds > 0:
        return math.nan, math.nan
    return 1000.0 * kimg / seconds, flops / seconds


def teacher_reference(metrics: Mapping[str, float], metric: str, *, size: str = "") -> tuple[float, str | None]:
    """The teacher's value of the metric and where it comes from: measured (`teacher/<metric>`, or
    with `size="_final"` at the end's size), else published (at the protocol's size), else unknown."""
    if f"teacher/{metric}{size}" in metrics:
        return float(metrics[f"teacher/{metric}{size}"]), "measured"
    if f"teacher/{metric}_published" in metrics:
        return float(metrics[f"teacher/{metric}_published"]), "published"
    return math.nan, None


def final_teacher_reference(metrics: Mapping[str, float], metric: str) -> tuple[float, str | None]:
    """The teacher's value at the size of the run's final metric: the end's size where the end was
    scored on more images than the evaluations (`eval/<metric>_final`), otherwise the curve's."""
    return teacher_reference(metrics, metric, size="_final" if f"eval/{metric}_final" in metrics else "")


# -- one run, then one row ------------------------------------------------------------------------
def run_summary(info: Mapping[str, Any], curve: pd.DataFrame) -> dict[str, Any]:
    """One run's numbers. `info` holds its identity (run_id, dataset, method, settings, seed,
    metric, ...) and `teacher_metric` / `teacher_metric_source`."""
    metric = str(info["metric"])
    points = evaluation_points(curve, metric)
    teacher = float(info.get("teacher_metric", math.nan))
    out: dict[str, Any] = dict(info)
    out["final"] = final_metric(curve, metric)
    for name in logged_values(curve):
        out[f"final_{name}"] = final_metric(curve, name)
    for f in FRACTIONS:
        out[f"metric_at_{_pct(f)}"] = metric_at_fraction(points, f)
    for k in FACTORS:
        hit = first_reaching(points, k * teacher)
        tag = _factor(k)
        for col in ("flops", "passes", "kimg"):
            out[f"{col}_to_{tag}"] = float(hit[col]) if hit is not None else math.nan
        out[f"reached_{tag}"] = (hit is not None) if math.isfinite(teacher) else None
    out["log_area"] = log_metric_area(points)
    out["images_per_s"], out["flops_per_s"] = end_throughput(curve)
    return out


def _all_or_nan(values: pd.Series) -> float:
    """The mean when every seed has a value, else NaN (a mean over some seeds would look better
    than the row is)."""
    return float(values.mean()) if len(values) and values.notna().all() else math.nan


def _join(values: Iterable[Any]) -> str:
    seen = [str(v) for v in dict.fromkeys(values) if v is not None and str(v) != "" and not (isinstance(v, float) and math.isnan(v))]
    return ";".join(seen)


def _seed_key(seed: Any) -> tuple[int, Any]:
    try:
        return (0, int(seed))
    except (TypeError, ValueError):
        return (1, str(seed))


def value_columns_of(runs: pd.DataFrame) -> list[str]:
    """The `final_<value>` columns of the per-run numbers (one per metric value logged), sorted."""
    return sorted(c for c in runs.columns if c.startswith("final_") and c != "final_images")


def board_columns(value_columns: Sequence[str]) -> list[str]:
    """COLUMNS with each metric value's columns after `proxy`: its mean over seeds, then its 95%
    interval over seeds (`<column>_ci95_low`, `<column>_ci95_high`)."""
    at = COLUMNS.index("proxy") + 1
    values = [c for col in value_columns for c in (col, f"{col}_ci95_low", f"{col}_ci95_high")]
    return [*COLUMNS[:at], *values, *COLUMNS[at:]]


def value_summaries(g: pd.DataFrame, value_columns: Sequence[str]) -> dict[str, float]:
    """Each metric value's mean over a row's seeds (NaN unless every seed has it) and its 95%
    interval over them (`mean_interval`; NaN below 2 seeds)."""
    out: dict[str, float] = {}
    for col in value_columns:
        values = g[col].astype(float) if col in g else pd.Series([math.nan] * len(g))
        out[col] = _all_or_nan(values)
        out[f"{col}_ci95_low"], out[f"{col}_ci95_high"] = mean_interval(values.to_numpy())
    return out


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-run numbers (run_summary rows) -> the leaderboard, one row per (dataset, method,
    settings), best final mean first within a dataset."""
    rows = []
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    value_columns = value_columns_of(runs)
    for (dataset, method, _, settings), g in runs.groupby(["dataset", "method", *PROVENANCE_COLUMNS[:1], "settings"], sort=False):
        g = g.iloc[sorted(range(len(g)), key=lambda i: _seed_key(g["seed"].iloc[i]))]
        final = g["final"].astype(float)
        teacher = g["teacher_metric"].astype(float)
        # the final's own size (older rows without the column: the curve's teacher, as then)
        teacher_final = g["teacher_metric_final"].astype(float) if "teacher_metric_final" in g else teacher
        row: dict[str, Any] = {
            "source": MEASURED, "dataset": dataset, "method": method, "settings": settings, **provenance_of_row(g),
            "metric": _join(g["metric"]),
            "n_seeds": len(g), "seeds": _join(g["seed"]),
            "final_mean": final.mean(), "final_std": final.std(ddof=1) if len(g) > 1 else math.nan,
            "final_min": final.min(), "final_max": final.max(),
        }
        row["final_ci95_low"], row["final_ci95_high"] = mean_interval(final.to_numpy())
        images = pd.to_numeric(g["final_images"], errors="coerce") if "final_images" in g else pd.Series(dtype=float)
        row["final_images"] = int(images.min()) if len(images) and images.notna().all() else None
        row["proxy"] = None if row["final_images"] is None else bool(row["final_images"] < PROTOCOL_IMAGES)
        row |= value_summaries(g, value_columns)
        row["final_vs_teacher"] = row["final_mean"] / teacher_final.mean() if teacher_final.notna().all() else math.nan
        for f in FRACTIONS:
            row[f"metric_at_{_pct(f)}"] = _all_or_nan(g[f"metric_at_{_pct(f)}"].astype(float))
        for k in FACTORS:
            tag = _factor(k)
            for col in ("flops", "passes", "kimg"):
                row[f"{col}_to_{tag}"] = _all_or_nan(g[f"{col}_to_{tag}"].astype(float))
            reached = g[f"reached_{tag}"]
            row[f"seeds_reached_{tag}"] = int(reached.astype(bool).sum()) if reached.notna().all() else None
        row["log_area"] = _all_or_nan(g["log_area"].astype(float))
        nfe = _join(g["nfe"])
        row["nfe"] = int(nfe) if nfe.isdigit() else (nfe or None)
        row["images_per_s"] = float(g["images_per_s"].astype(float).mean())
        row["flops_per_s"] = float(g["flops_per_s"].astype(float).mean())
        row["teacher"] = _join(g["teacher"])
        row["teacher_metric"] = float(teacher.mean()) if teacher.notna().any() else math.nan
        row["teacher_metric_source"] = _join(g["teacher_metric_source"])
        row["teacher_metric_final"] = float(teacher_final.mean()) if teacher_final.notna().any() else math.nan
        row["teacher_metric_final_source"] = (_join(g["teacher_metric_final_source"]) if "teacher_metric_final_source" in g
                                              else row["teacher_metric_source"])
        row["code_versions"] = _join(sorted(set(g["code_version"].dropna().astype(str))))
        row["budget"] = _join(g["budget"])
        row["bench"] = _join(g["bench"])
        row["stopped_by_time"] = int((g["stopped_by"] == "max_seconds").sum())
        row["run_ids"] = _join(g["run_id"])
        rows.append(row)
    board = pd.DataFrame(rows, columns=board_columns(value_columns))
    board["final_images"] = board["final_images"].astype("Int64")
    board["proxy"] = board["proxy"].astype("boolean")
    for k in FACTORS:
        board[f"seeds_reached_{_factor(k)}"] = board[f"seeds_reached_{_factor(k)}"].astype("Int64")
    return board.sort_values(["dataset", "final_mean", "method"], na_position="last", kind="stable").reset_index(drop=True)


def load_published(datasets: Iterable[str] | None = None) -> pd.DataFrame:
    """The published reference figures (published.csv), `source` as `published (arXiv:<id>)`,
    for the given datasets (all when None)."""
    with files("sidbench.harness").joinpath("published.csv").open() as f:
        # as strings first: an arXiv id such as 2206.00364 must not be read as a number
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    df["nfe"] = df["nfe"].astype(int)
    df["value"] = df["value"].astype(float)
    df["source"] = "published (" + df["source"] + ")"
    if datasets is not None:
        df = df[df["dataset"].isin(list(datasets))]
    return df[PUBLISHED_COLUMNS].reset_index(drop=True)


# -- where settings came from (sidbench tune, issue 26) -----------------------------------------------
def settings_provenance(run: Run) -> dict[str, Any]:
    """A run's `settings_source` (published, derived or tuned:<study>) and `tuning_flops`, from its
    params (the config keys of those names). A run from before they existed: the source its
    method's preset for the dataset declares (derived when there is none), no tuning compute."""
    params, tags = run.data.params, run.data.tags
    source = params.get("settings_source")
    if source is None:
        source = preset_source(tags.get("method", ""), tags.get("dataset", ""))
    try:
        flops = float(params.get("tuning_flops", 0.0))
    except ValueError:
        flops = math.nan
    return {"settings_source": source, "tuning_flops": flops}


@functools.lru_cache(maxsize=None)
def preset_source(method: str, dataset: str) -> str:
    """The `settings_source` that preset/<method>_<dataset>.yaml (or the preset it builds on) sets."""
    from sidbench.config import compose

    try:
        return str(compose([f"method={method}", f"dataset={dataset}"]).get("settings_source", "derived"))
    except Exception:  # noqa: BLE001 - a method or dataset this install no longer has
        return "derived"


def provenance_of_row(g: pd.DataFrame) -> dict[str, Any]:
    """The provenance columns of one row (its runs share the source: it is part of the row's key)."""
    flops = g["tuning_flops"].astype(float)
    return {"settings_source": _join(g["settings_source"]), "tuning_flops": float(flops.max()) if len(flops) else 0.0}


def is_tuning_trial(run: Run) -> bool:
    """A `sidbench tune` trial (tag sidbench.tune): its settings are a draw of a study, not a row."""
    return "sidbench.tune" in run.data.tags


# -- reading MLflow ------------------------------------------------------------------------------
def _metric_name(run: Run) -> str | None:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    if tags.get("metric") or params.get("eval.metric"):
        return tags.get("metric") or params.get("eval.metric")
    # older runs: the one eval/<name> that is neither a time nor the final-sample repeat
    names = {k[5:] for k in metrics if k.startswith("eval/") and not k.startswith("eval/seconds") and not k.endswith("_final")}
    return names.pop() if len(names) == 1 else None


def run_info(run: Run, experiment_name: str) -> dict[str, Any]:
    """A run's identity and tags (what groups it and labels its row)."""
    tags, params = run.data.tags, run.data.params
    metric = _metric_name(run) or ""
    teacher_value, teacher_source = teacher_reference(run.data.metrics, metric)
    final_value, final_source = final_teacher_reference(run.data.metrics, metric)
    budget = tags.get("budget")
    if not budget and params.get("trainer.budget.unit"):
        budget = f"{params['trainer.budget.unit']} {params.get('trainer.budget.value', '')}".strip()
    return {
        "run_id": run.info.run_id, "dataset": tags.get("dataset") or experiment_name, "method": tags.get("method", "?"),
        # without the settings hash (a run from before it) a run is a row of its own: merging it with
        # others could average different settings
        "settings": tags.get("sidbench.settings") or f"run-{run.info.run_id[:8]}",
        "seed": tags.get("seed", params.get("trainer.seed")), "metric": metric, "nfe": tags.get("nfe"),
        "teacher": tags.get("teacher"), "teacher_metric": teacher_value, "teacher_metric_source": teacher_source,
        "teacher_metric_final": final_value, "teacher_metric_final_source": final_source,
        "code_version": tags.get("code_version"), "budget": budget, "bench": tags.get("sidbench.bench"),
        "stopped_by": tags.get("stopped_by"), "run_dir": tags.get("sidbench.run_dir"),
        **settings_provenance(run),
        # the final evaluation's size: the tag sidbench.run sets, else (older runs) the setting
        "final_images": tags.get("final_images") or params.get("eval.final_samples"),
    }


def read_run_curve(client: MlflowClient, run: Run, metric: str) -> pd.DataFrame:
    """The run's tidy curve: the counters and every metric value it logged (`eval/<name>`,
    `eval/<name>_final`; the headline `metric` among them)."""
    values = [k for k in run.data.metrics if k.startswith("eval/") and not k[5:].startswith("seconds")]
    keys = [k for k in dict.fromkeys((*COUNTERS, f"eval/{metric}", f"eval/{metric}_final", *sorted(values)))
            if k in run.data.metrics]
    return curve_frame(run.info.run_id, {k: client.get_metric_history(run.info.run_id, k) for k in keys})


def bench_ids(bench: str | Sequence[str] | None) -> list[str]:
    """One bench id or several (`--bench` repeated: a derived and a tuned bench side by side) as a list."""
    return [] if bench is None else [bench] if isinstance(bench, str) else list(bench)


def read_runs(client: MlflowClient, experiments: Sequence[str] | None = None, bench: str | Sequence[str] | None = None
              ) -> tuple[list[dict[str, Any]], pd.DataFrame, list[str], list[str]]:
    """(finished runs' infos, their tidy curves, the ids of runs left out, the experiment names read);
    with `bench`, only the runs of that bench (or of those benches)."""
    if experiments:
        exps = []
        for name in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                from sidbench.errors import InputError

                known = sorted(e.name for e in all_pages(client.search_experiments))
                raise InputError(f"no MLflow experiment {name!r} at this tracking URI (there are: {', '.join(known) or 'none'})")
            exps.append(exp)
    else:
        exps = all_pages(client.search_experiments)
    names = {e.experiment_id: e.name for e in exps}
    benches = bench_ids(bench)
    for b in benches:
        if "'" in b:
            from sidbench.errors import InputError

            raise InputError(f"--bench {b!r}: a bench id cannot contain a quote")

    def search(filt: str = "") -> list[Run]:
        return all_pages(client.search_runs, experiment_ids=list(names), filter_string=filt, max_results=1000) if names else []

    runs = [r for b in benches for r in search(f"tags.`sidbench.bench` = '{b}'")] if benches else search()
    for b in benches:
        if not any(r.data.tags.get("sidbench.bench") == b for r in runs):
            from sidbench.errors import InputError

            known = sorted({r.data.tags["sidbench.bench"] for r in search() if "sidbench.bench" in r.data.tags})
            raise InputError(f"--bench {b}: no runs of this bench in the store (benches there: {', '.join(known) or 'none'}); "
                             "nothing written")
    infos, curves, skipped = [], [], []
    for run in runs:
        # A teacher's or a released generator's measurement (sidbench.eval.teacher_metrics,
        # .published_generators), or a tuning trial, shares the experiment but is no benchmark run;
        # filtered here, since a `!=` filter in the store drops runs without the tag.
        if run.data.tags.get("sidbench.kind") in (TEACHER_MEASUREMENT, PUBLISHED_GENERATOR) or is_tuning_trial(run):
            continue
        if run.info.status != "FINISHED":
            skipped.append(run.info.run_id)
            continue
        info = run_info(run, names[run.info.experiment_id])
        infos.append(info)
        curves.append(read_run_curve(client, run, info["metric"]))
    curve = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    return infos, curve, skipped, list(names.values())


def read_published_generators(client: MlflowClient, experiments: Iterable[str]) -> pd.DataFrame:
    """The FINISHED measurements of released generators in the named experiments (RELEASED_COLUMNS),
    the newest of each (file, dataset, metric, sample count, metric settings), best value first
    within a dataset and metric."""
    ids = [e.experiment_id for e in (client.get_experiment_by_name(n) for n in dict.fromkeys(experiments)) if e is not None]
    filt = f"tags.`sidbench.kind` = '{PUBLISHED_GENERATOR}' AND attributes.status = 'FINISHED'"
    runs = all_pages(client.search_runs, experiment_ids=ids, filter_string=filt, max_results=1000,
                     order_by=["attributes.start_time DESC"]) if ids else []
    rows = []
    for run in runs:
        tags = run.data.tags
        # one row per value the measurement logged (FID one; precision/recall two)
        for key, value in sorted(run.data.metrics.items()):
            if not key.startswith(PUBLISHED_GENERATOR + "/"):
                continue
            rows.append({"source": RELEASED, "dataset": tags.get("dataset"), "name": tags.get("name"),
                         "method": tags.get("method"),
                         "nfe": int(tags["nfe"]) if str(tags.get("nfe", "")).isdigit() else None,
                         "metric": key[len(PUBLISHED_GENERATOR) + 1:], "value": float(value),
                         "num_samples": int(tags.get("num_samples", 0) or 0), "seed": tags.get("seed"),
                         "metric_settings": tags.get("metric_settings", ""),
                         "generator_dataset": tags.get("generator_dataset"), "address": tags.get("url"),
                         "sha256": tags.get("sha256"), "code_version": tags.get("code_version"),
                         "run_id": run.info.run_id})
    df = pd.DataFrame(rows, columns=RELEASED_COLUMNS)
    df = df.drop_duplicates(_RELEASED_KEY, keep="first")  # newest first: the newest of each stays
    df["nfe"] = df["nfe"].astype("Int64")
    return df.sort_values(["dataset", "metric", "value", "name"], kind="stable").reset_index(drop=True)


def last_sample_grid(paths: Iterable[str]) -> str | None:
    """The last sample grid, by the kimg in its name (`samples/kimg<kimg:09.3f>.png`)."""
    def kimg(p: str) -> float:
        try:
            return float(Path(p).stem.removeprefix("kimg"))
        except ValueError:
            return -math.inf

    pngs = [p for p in paths if p.endswith(".png")]
    return max(pngs, key=kimg) if pngs else None


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def download_final_samples(client: MlflowClient, run_id: str, dst: Path) -> np.ndarray | None:
    """The run's last sample grid as an image array, or None when it logged none."""
    from PIL import Image

    try:
        path = last_sample_grid(f.path for f in client.list_artifacts(run_id, "samples"))
        if path is None:
            return None
        dst.mkdir(parents=True, exist_ok=True)
        with _no_progress_bar():  # MLflow's per-file bar would interleave with the leaderboard's output
            local = client.download_artifacts(run_id, path, str(dst))
        with Image.open(local) as im:
            return np.asarray(im.convert("RGB"))
    except OSError:  # an artifact store that moved or was cleaned: the mosaic shows the gap
        return None


# -- building and printing -----------------------------------------------------------------------
def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _source(row: pd.Series) -> str:
    """The kind of a row's settings source: published, derived or tuned (without the study)."""
    return str(row.get("settings_source", "derived")).split(":")[0]


def _row_label(row: pd.Series, board: pd.DataFrame) -> str:
    """The method; when it has several rows on the dataset, also where their settings came from
    and the settings hash."""
    same = board[(board["dataset"] == row["dataset"]) & (board["method"] == row["method"])]
    return row["method"] if len(same) == 1 else f"{row['method']} {_source(row)} [{str(row['settings'])[:8]}]"


def _plot(client: MlflowClient, board: pd.DataFrame, runs: pd.DataFrame, curves: pd.DataFrame, out: Path) -> list[Path]:
    from sidbench.harness import plots

    written = []
    for (dataset, metric), rows in board.groupby(["dataset", "metric"], sort=False):
        series, tiles = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for _, row in rows.iterrows():
                ids = str(row["run_ids"]).split(";")
                points = [evaluation_points(curves[curves["run_id"] == i], metric) for i in ids]
                label = _row_label(row, board)
                series.append(plots.Series(label, points, group=str(row["method"]), dashed=_source(row) == "tuned"))
                first = runs[runs["run_id"] == ids[0]].iloc[0]  # run_ids are in seed order
                image = download_final_samples(client, ids[0], Path(tmp) / ids[0])
                tiles.append((f"{label} (seed {first['seed']})\n{metric} {first['final']:.4g}", image))
        teachers = rows.dropna(subset=["teacher_metric"]).drop_duplicates(["teacher_metric", "teacher_metric_source"])
        teacher_lines = [(float(t.teacher_metric), str(t.teacher_metric_source)) for t in teachers.itertuples()]
        stem = out / f"{_safe(dataset)}-{_safe(metric)}"
        written.append(plots.curves_figure(f"{dataset}: {metric}", metric, series, teacher_lines, Path(f"{stem}-curves.png")))
        written.append(plots.samples_mosaic(f"{dataset}: final samples", tiles, Path(f"{stem}-samples.png")))
    return written


def build_leaderboard(uri: str, out: Path, experiments: list[str] | None = None, bench: str | Sequence[str] | None = None
                      ) -> Leaderboard:
    """Read the finished runs at `uri` (all experiments, or the named ones; only a bench's runs when
    `bench` is given: one id or several) and write to `out`: leaderboard.csv (measured), leaderboard_published.csv
    (reference figures of the datasets read), leaderboard_runs.csv (the per-seed numbers),
    leaderboard_published_generators.csv (released generators measured here: of the datasets read,
    or of the bench's datasets), and per dataset and metric the curves and the final-samples mosaic
    as PNG. With neither a finished training run nor a released generator's measurement nothing is
    written."""
    client = open_store(uri)
    infos, curves, skipped, exp_names = read_runs(client, experiments, bench)
    runs = pd.DataFrame([run_summary(i, curves[curves["run_id"] == i["run_id"]]) for i in infos])
    board = aggregate(runs)
    # Released generators belong to no bench: beside a bench's rows, those of the bench's datasets.
    released = read_published_generators(client, sorted(set(board["dataset"])) if bench else exp_names)
    if not infos and released.empty:  # nothing measured: leave whatever `out` holds (a committed leaderboard) as it is
        from sidbench.errors import InputError

        left = f" ({len(skipped)} not FINISHED)" if skipped else ""
        which = f" for --bench {', '.join(bench_ids(bench))}" if bench else ""
        raise InputError(f"no FINISHED runs{left} at {uri}{which}; nothing written to {out}")
    datasets = set(exp_names) | set(board["dataset"])
    published = load_published(datasets)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.csv", out / "leaderboard_published.csv", out / "leaderboard_runs.csv",
             out / "leaderboard_published_generators.csv"]
    board.to_csv(paths[0], index=False)
    published.to_csv(paths[1], index=False)
    runs.to_csv(paths[2], index=False)
    released.to_csv(paths[3], index=False)
    if not board.empty:
        paths += _plot(client, board, runs, curves, out)
    return Leaderboard(board, published, paths, runs, curves, skipped, released)


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return ""
    return format(x, spec) if isinstance(x, (int, float, np.floating, np.integer)) else str(x)


def _fmt_rate(x: float) -> str:
    return _fmt(x, ",.0f") if isinstance(x, float) and x >= 1000 else _fmt(x, ".3g")


#: The `final_*` columns that are not a metric value's.
_FIXED_FINAL = ("mean", "std", "min", "max", "ci95_low", "ci95_high", "vs_teacher", "images")


def _value_cell(r: pd.Series, col: str) -> str:
    """A metric value's mean over seeds, with its 95% interval over seeds when there is one."""
    low, high = r.get(f"{col}_ci95_low"), r.get(f"{col}_ci95_high")
    ci = f" [{_fmt(low)}, {_fmt(high)}]" if low is not None and _fmt(low) else ""
    return f"{_fmt(r[col])}{ci}"


def print_leaderboard(board: Leaderboard, console: Console) -> None:
    """The measured rows, one table per (dataset, metric), then the published figures in a table of
    their own."""
    from rich.table import Table

    m = board.measured
    for (dataset, metric), rows in m.groupby(["dataset", "metric"], sort=False):
        teacher = ", ".join(f"{_fmt(r.teacher_metric)} ({r.teacher_metric_source})" for r in
                            rows.dropna(subset=["teacher_metric"]).drop_duplicates(["teacher_metric"]).itertuples()) or "unknown"
        ends = (rows.dropna(subset=["teacher_metric_final"]).drop_duplicates(["teacher_metric_final"])
                if "teacher_metric_final" in rows else rows.iloc[:0])
        if any(r.teacher_metric_final != r.teacher_metric for r in ends.itertuples()):
            teacher += "; at the final's size " + ", ".join(
                f"{_fmt(r.teacher_metric_final)} ({r.teacher_metric_final_source})" for r in ends.itertuples())
        table = Table(title=f"{dataset}: {metric}, lower is better (measured, FINISHED runs)",
                      caption=f"teacher {teacher}; kimg to k x teacher: mean over seeds (seeds that got there / seeds); "
                              f"95% CI: Student's t over seeds; images: the final evaluation's (proxy: fewer than "
                              f"{PROTOCOL_IMAGES:,}); precision and recall: higher is better")
        others = [c for c in m.columns if c.startswith("final_") and c.removeprefix("final_") not in (*_FIXED_FINAL, metric)
                  and not c.endswith(("_ci95_low", "_ci95_high")) and rows[c].notna().any()]
        for col in ("method", "settings", "source", "seeds", "final (mean ± std)", "95% CI", "min-max", "images", "x teacher",
                    "@25%", "@50%", "@100%", "kimg to 1.5x", "kimg to 1.0x", "log-area", "NFE", "img/s",
                    *(c.removeprefix("final_") for c in others), "budget"):
            table.add_column(col, justify="left" if col in ("method", "settings", "source", "budget") else "right")
        for _, r in rows.iterrows():
            std = f" ± {_fmt(r['final_std'], '.2g')}" if _fmt(r["final_std"]) else ""
            ci = f"[{_fmt(r['final_ci95_low'])}, {_fmt(r['final_ci95_high'])}]" if _fmt(r["final_ci95_low"]) else ""
            images = "" if pd.isna(r["final_images"]) else f"{int(r['final_images']):,}" + (" proxy" if r["proxy"] else "")
            reach = [f"{_fmt(r[f'kimg_to_{t}'], '.4g') or '-'} ({_fmt(r[f'seeds_reached_{t}'], 'd') or '?'}/{r['n_seeds']})"
                     for t in ("1.5x", "1.0x")]
            table.add_row(str(r["method"]), str(r["settings"])[:8], str(r["settings_source"]), f"{r['n_seeds']} ({r['seeds']})",
                          f"{_fmt(r['final_mean'])}{std}", ci, f"{_fmt(r['final_min'])}-{_fmt(r['final_max'])}", images,
                          _fmt(r["final_vs_teacher"], ".3g"),
                          *(_fmt(r[f"metric_at_{p}"]) for p in ("25", "50", "100")), *reach,
                          _fmt(r["log_area"], ".3f"), _fmt(r["nfe"]), _fmt_rate(r["images_per_s"]),
                          *(_value_cell(r, c) for c in others), str(r["budget"]))
        console.print(table)
    if board.skipped:
        console.print(f"{len(board.skipped)} run(s) not FINISHED left out: {', '.join(board.skipped)}")
    r = board.released
    if not r.empty:
        table = Table(title="Released generators, measured here (sidbench fid published=<name>; not training runs)",
                      caption="the authors' files scored with this suite's protocol; their papers' figures are below")
        for col in ("dataset", "name", "method", "NFE", "metric", "value", "images", "address"):
            table.add_column(col, justify="right" if col in ("NFE", "value", "images") else "left")
        for _, x in r.iterrows():
            table.add_row(str(x["dataset"]), str(x["name"]), str(x["method"]), _fmt(x["nfe"]), str(x["metric"]),
                          _fmt(x["value"]), f"{int(x['num_samples']):,}", str(x["address"]))
        console.print(table)
    p = board.published
    if not p.empty:
        table = Table(title="Published figures (from the papers, not measured here)", caption=DATA_LEGEND)
        for col in PUBLISHED_COLUMNS:
            table.add_column(col, justify="right" if col in ("nfe", "value") else "left")
        for _, r in p.iterrows():
            table.add_row(*(_fmt(r[c]) for c in PUBLISHED_COLUMNS))
        console.print(table)
    for path in board.paths:
        console.print(f"wrote {path}")
