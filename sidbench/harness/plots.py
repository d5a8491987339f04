"""The leaderboard's figures, as PNG: per dataset and metric, the curves against compute, images
and time, and a mosaic of each row's final samples.

matplotlib is imported inside the functions and draws on its Agg canvas directly (a `Figure`, no
pyplot): nothing here needs a display or touches the process-wide backend, and `sidbench` starts
without paying for the import.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: The three panels: column of the evaluation points -> axis label.
AXES = (("flops", "training FLOPs"), ("kimg", "images seen (kimg)"), ("seconds", "training seconds"))
MOSAIC_COLUMNS = 5


@dataclass
class Series:
    """One line of a figure: a leaderboard row, with each seed's evaluation points
    (`leaderboard.evaluation_points`). Lines of one `group` (a method) share a colour; `dashed`
    marks a row whose settings were tuned, so a method's derived and tuned rows read as a pair."""

    label: str
    points: list[pd.DataFrame]
    group: str = ""
    dashed: bool = False


def line_styles(series: Sequence[Series]) -> list[tuple[str, str]]:
    """(colour, line style) of each series: one colour per group, in order of first appearance
    (a series without a group is its own), solid or dashed."""
    groups = list(dict.fromkeys(s.group or s.label for s in series))
    return [(f"C{groups.index(s.group or s.label) % 10}", "--" if s.dashed else "-") for s in series]


def mean_curve(points: Sequence[pd.DataFrame], x: str) -> pd.DataFrame:
    """The seeds' curves lined up by the index of their evaluations (runs of equal settings
    evaluate at the same fractions of the same budget), over the points every seed has:
    columns x (the mean x), mean, min, max of the metric."""
    n = min((len(p) for p in points), default=0)
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("x", "mean", "min", "max")})
    xs = np.stack([p[x].to_numpy(dtype=float)[:n] for p in points])
    ys = np.stack([p["value"].to_numpy(dtype=float)[:n] for p in points])
    return pd.DataFrame({"x": xs.mean(axis=0), "mean": ys.mean(axis=0), "min": ys.min(axis=0), "max": ys.max(axis=0)})


def log_x(xs: Sequence[float]) -> bool:
    """Whether a panel's x axis is logarithmic: when its positive points span more than ~2 decades
    (log-spaced evaluations; a method whose precomputation is charged starts far from 0 and would be
    a sliver at the right of a linear axis)."""
    pos = [v for v in xs if v > 0 and math.isfinite(v)]
    return len(pos) >= 2 and max(pos) / min(pos) >= 50


def curves_figure(title: str, metric: str, series: Sequence[Series], teachers: Sequence[tuple[float, str]], path: Path) -> Path:
    """Three panels (metric against FLOPs, kimg and training seconds), log y; one line per series
    (mean over seeds) with its min-max band (`line_styles`), and the teacher's value as a labelled
    black dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(15, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(AXES), sharey=True)
    for ax, (x, xlabel) in zip(axes, AXES):
        curves = [mean_curve(s.points, x).dropna(subset=["x", "mean"]) for s in series]
        curves = [c[c["mean"] > 0] for c in curves]  # a log y axis cannot show 0
        log = log_x([v for c in curves for v in c["x"]])
        if log:  # the start (x = 0) has no place on a log axis: it is drawn at the left edge, hollow
            left = min(v for c in curves for v in c["x"] if v > 0) / 3
        for s, c, (color, ls) in zip(series, curves, line_styles(series)):
            if c.empty:
                continue
            seeds = len(s.points)
            if log:
                start = c["x"] <= 0
                c = c.assign(x=c["x"].where(~start, left))
                ax.plot(c["x"][start], c["mean"][start], marker="o", ms=5, mfc="none", ls="none", color=color)
            ax.plot(c["x"], c["mean"], marker="o", ms=3, lw=1.5, ls=ls, color=color, label=f"{s.label} ({seeds} seed{'s' if seeds != 1 else ''})")
            if seeds > 1:
                ax.fill_between(c["x"], c["min"], c["max"], color=color, alpha=0.2, lw=0)
        for value, source in teachers:
            if value > 0:
                ax.axhline(value, color="k", ls="--", lw=1, label=f"teacher {value:.4g} ({source})")
                ax.annotate(f"teacher ({source})", xy=(1, value), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8)
        ax.set_yscale("log")
        # plain numbers (0.2, 0.5, 1, 2): a metric within a decade or two reads badly as 2x10^-1
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        if log:
            ax.set_xscale("log")
            xlabel += " (log; hollow: the start, at 0)"
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"{metric} (mean over seeds; band: min-max)")
    if len(series) > 8:  # a long legend would hide the first panel's curves: beside the panels instead
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    else:
        axes[0].legend(fontsize=8)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def samples_mosaic(title: str, tiles: Sequence[tuple[str, np.ndarray | None]], path: Path) -> Path:
    """Each row's final sample grid side by side (at most MOSAIC_COLUMNS a line), titled; a tile
    without an image says so rather than leaving a gap that reads as a blank grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(tiles))
    cols = min(n, MOSAIC_COLUMNS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 3.6 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, (label, image) in zip(axes, tiles):
        if image is None:
            ax.text(0.5, 0.5, "no samples logged", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(label, fontsize=9)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
