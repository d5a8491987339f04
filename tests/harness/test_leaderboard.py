"""The leaderboard read back from a real (SQLite) MLflow store filled with hand-picked runs; every
expected number is worked out here from the literal inputs, never by the code under test."""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sidbench.harness import leaderboard as lb
from sidbench.harness.plots import mean_curve

ln = math.log
TEACHER = 0.5  # the digits teacher's measured fd_pixel in this store, at the evaluations' size
TEACHER_FINAL = 0.4  # ... and at the size of SiD's final evaluations (eval/fd_pixel_final)
BUDGET_FLOPS = 1e12  # every digits run: flops = fraction * 1e12, kimg = 100 * fraction
KIMG = 100.0
PASSES = 1.1e6

# (method, seed) -> eval fractions, eval values, final-sample value or None, training seconds at the end
SID = {
    0: ([0.0, 0.25 - 1e-12, 0.5, 0.75, 1.0], [8.0, 2.0, 1.0, 0.6, 0.5], 0.52, 200.0),
    1: ([0.0, 0.25 - 1e-12, 0.5, 0.75, 1.0], [8.0, 4.0, 0.7, 0.5, 0.4], 0.41, 250.0),
    2: ([0.0, 0.25 - 1e-12, 0.5, 0.75, 1.0], [8.0, 1.0, 0.74, 0.45, 0.45], 0.44, 400.0),
}
# DMD-like: its first evaluation comes after 5% of the budget spent before training
DMD = {
    0: ([0.05, 0.24, 0.5, 1.0], [6.0, 3.0, 1.0, 0.7], None, 100.0),
    1: ([0.05, 0.24, 0.5, 1.0], [6.0, 2.0, 0.8, 0.45], None, 100.0),
}

# DMD2-like on cifar10: FID the headline, with FD-DINOv2 and precision/recall beside it (eval.metrics),
# final evaluation on 10,000 images (a proxy); seed -> (FID curve, FID final, other values' curve, finals)
C10_DMD2 = {
    0: ([300.0, 3.5], 2.9, {"fd_dinov2": [900.0, 130.0], "precision": [0.1, 0.5], "recall": [0.0, 0.4]},
        {"fd_dinov2": 100.0, "precision": 0.6, "recall": 0.5}),
    1: ([300.0, 3.9], 3.3, {"fd_dinov2": [900.0, 140.0], "precision": [0.1, 0.6], "recall": [0.0, 0.45]},
        {"fd_dinov2": 120.0, "precision": 0.7, "recall": 0.55}),
}

COLUMNS = [
    "source", "dataset", "method", "settings", "settings_source", "tuning_flops", "metric", "n_seeds", "seeds",
    "final_mean", "final_std", "final_min", "final_max", "final_ci95_low", "final_ci95_high", "final_vs_teacher",
    "final_images", "proxy",
    *(c for v in ("fd_dinov2", "fd_pixel", "fid", "precision", "recall")
      for c in (f"final_{v}", f"final_{v}_ci95_low", f"final_{v}_ci95_high")),
    "metric_at_25", "metric_at_50", "metric_at_100",
    "flops_to_1.5x", "passes_to_1.5x", "kimg_to_1.5x", "seeds_reached_1.5x",
    "flops_to_1.0x", "passes_to_1.0x", "kimg_to_1.0x", "seeds_reached_1.0x",
    "log_area", "nfe", "images_per_s", "flops_per_s",
    "teacher", "teacher_metric", "teacher_metric_source", "teacher_metric_final", "teacher_metric_final_source",
    "code_versions", "budget", "bench", "stopped_by_time", "run_ids",
]


def _png(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (24, 24), color).save(path)
    return path


def _log_run(client, exp_id: str, tmp: Path, *, method: str, seed: int, settings: str, fractions, values, final, seconds,
             metric: str = "fd_pixel", teacher: dict[str, float] | None = None, status: str = "FINISHED",
             bench: str | None = None, code: str = "abc123", grids: dict[float, tuple[int, int, int]] | None = None,
             others: dict[str, list[float]] | None = None, others_final: dict[str, float] | None = None,
             final_images: int | None = None) -> str:
    """A run logged the way sidbench's trainer logs one (sidbench/trainer/loop.py, run.py)."""
    from mlflow.entities import Metric, Param

    run_id = client.create_run(exp_id).info.run_id
    tags = {"method": method, "dataset": client.get_experiment(exp_id).name, "seed": str(seed), "teacher": f"{method}-teacher.safetensors",
            "code_version": code, "device": "cpu", "world_size": "1", "sidbench.run_dir": f"/runs/{method}-{seed}",
            "sidbench.settings": settings, "metric": metric, "nfe": "1", "budget": "flops 1e+12"}
    if bench:
        tags["sidbench.bench"] = bench
    if final_images is not None:
        tags["final_images"] = str(final_images)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    client.log_batch(run_id, params=[Param("trainer.budget.unit", "flops"), Param("trainer.budget.value", "1e12"), Param("eval.metric", metric)])

    def line(fraction: float, extra: dict[str, float]) -> None:
        counters = {"kimg": KIMG * fraction, "compute/passes": PASSES * fraction, "compute/teacher_passes": 0.2 * PASSES * fraction,
                    "compute/flops": BUDGET_FLOPS * fraction, "budget/fraction": fraction, "seconds": seconds * fraction,
                    "eval/seconds_total": 1.0}
        now = int(time.time() * 1000)
        step = int(round(KIMG * fraction * 1000))  # images seen
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in {**extra, **counters}.items()])

    for i, (f, v) in enumerate(zip(fractions, values)):
        extra = {f"eval/{metric}": v, "eval/seconds": 0.1, **{f"eval/{k}": c[i] for k, c in (others or {}).items()}}
        if i == 0:
            extra.update({f"teacher/{k}": t for k, t in (teacher or {}).items()})
        line(f, extra)
        if i == 0:
            line((fractions[0] + fractions[1]) / 2, {"loss/x": 1.0})  # a training line without evaluation
    if final is not None:  # the final evaluation on more samples repeats the counters at the last step
        line(fractions[-1], {f"eval/{metric}_final": final, "eval/seconds_final": 1.0,
                             **{f"eval/{k}_final": v for k, v in (others_final or {}).items()}})
    for kimg, color in (grids or {}).items():
        client.log_artifact(run_id, str(_png(tmp / f"kimg{kimg:09.3f}.png", color)), artifact_path="samples")
    client.set_terminated(run_id, status=status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("lb")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    digits = client.create_experiment("digits", artifact_location=(tmp / "art").as_uri())
    cifar = client.create_experiment("cifar10", artifact_location=(tmp / "art10").as_uri())
    ids: dict = {}
    for seed, (f, v, final, sec) in SID.items():
        # seed 0's last grid is red, the earlier ones blue: the mosaic must show the red one
        grids = {0.0: (0, 0, 255), 25.0: (0, 0, 255), 100.0: (255, 0, 0)} if seed == 0 else None
        ids["sid", seed] = _log_run(client, digits, tmp, method="sid", seed=seed, settings="set-sid", fractions=f, values=v, final=final,
                                    seconds=sec, teacher={"fd_pixel": TEACHER, "fd_pixel_final": TEACHER_FINAL}, bench="b1",
                                    code="abc124+dirty" if seed == 2 else "abc123", grids=grids)
    # unfinished: its curve (all 100) would change every mean if it were read
    ids["sid", 3] = _log_run(client, digits, tmp, method="sid", seed=3, settings="set-sid", fractions=SID[0][0], values=[100.0] * 5,
                             final=None, seconds=100.0, teacher={"fd_pixel": TEACHER}, bench="b1", status="RUNNING")
    # a bench whose only run has not finished
    ids["sid", 4] = _log_run(client, digits, tmp, method="sid", seed=4, settings="set-sid", fractions=SID[0][0], values=[100.0] * 5,
                             final=None, seconds=100.0, teacher={"fd_pixel": TEACHER}, bench="only-running", status="RUNNING")
    for seed, (f, v, final, sec) in DMD.items():
        ids["dmd", seed] = _log_run(client, digits, tmp, method="dmd", seed=seed, settings="set-dmd", fractions=f, values=v, final=final,
                                    seconds=sec, teacher={"fd_pixel": TEACHER})
    # one cifar10 run whose teacher is only known by its published figure
    ids["c10", 0] = _log_run(client, cifar, tmp, method="sid", seed=0, settings="set-c10", fractions=[0.0, 1.0], values=[300.0, 2.5],
                             final=None, seconds=10.0, metric="fid", teacher={"fid_published": 1.97}, final_images=50_000)
    for seed, (curve, final, others, others_final) in C10_DMD2.items():
        ids["c10dmd2", seed] = _log_run(client, cifar, tmp, method="dmd2", seed=seed, settings="set-c10-dmd2",
                                        fractions=[0.0, 1.0], values=curve, final=final, seconds=10.0, metric="fid",
                                        teacher={"fid_published": 1.97}, others=others, others_final=others_final,
                                        final_images=10_000)
    out = tmp / "results"
    board = lb.build_leaderboard(uri, out)
    return {"uri": uri, "tmp": tmp, "ids": ids, "board": board, "out": out}


def _row(board: pd.DataFrame, dataset: str, method: str) -> pd.Series:
    rows = board[(board["dataset"] == dataset) & (board["method"] == method)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_final_metric_statistics(store):
    sid = _row(store["board"].measured, "digits", "sid")
    assert sid["n_seeds"] == 3 and sid["seeds"] == "0;1;2"  # the RUNNING seed 3 is left out
    mean = (0.52 + 0.41 + 0.44) / 3  # eval/fd_pixel_final wins over the last curve point
    assert sid["final_mean"] == pytest.approx(mean)
    assert sid["final_std"] == pytest.approx(math.sqrt(((0.52 - mean) ** 2 + (0.41 - mean) ** 2 + (0.44 - mean) ** 2) / 2))
    assert (sid["final_min"], sid["final_max"]) == (pytest.approx(0.41), pytest.approx(0.52))
    # divided by the teacher at the final evaluation's own size, never by the curve's
    assert sid["final_vs_teacher"] == pytest.approx(mean / TEACHER_FINAL)
    assert (sid["teacher_metric_final"], sid["teacher_metric_final_source"]) == (pytest.approx(TEACHER_FINAL), "measured")
    dmd = _row(store["board"].measured, "digits", "dmd")
    assert dmd["final_mean"] == pytest.approx((0.7 + 0.45) / 2)  # no _final: the last evaluation
    assert dmd["final_vs_teacher"] == pytest.approx(dmd["final_mean"] / TEACHER) and dmd["teacher_metric_final"] == pytest.approx(TEACHER)
    dmd2 = _row(store["board"].measured, "cifar10", "dmd2")  # its end on 10k images, the teacher published
    assert dmd2["final_vs_teacher"] == pytest.approx(dmd2["final_mean"] / 1.97)
    assert dmd["final_std"] == pytest.approx(math.sqrt((0.7 - 0.575) ** 2 + (0.45 - 0.575) ** 2))
    assert store["ids"]["sid", 3] in store["board"].skipped


def test_confidence_interval_over_seeds(store):
    """mean -/+ t(0.975, n - 1) s / sqrt(n), with the t quantiles of a printed table (4.3027 for 2
    degrees of freedom, 12.7062 for 1)."""
    sid = _row(store["board"].measured, "digits", "sid")
    mean = (0.52 + 0.41 + 0.44) / 3
    s = math.sqrt(((0.52 - mean) ** 2 + (0.41 - mean) ** 2 + (0.44 - mean) ** 2) / 2)
    half = 4.302653 * s / math.sqrt(3)
    assert (sid["final_ci95_low"], sid["final_ci95_high"]) == (pytest.approx(mean - half, rel=1e-6),
                                                               pytest.approx(mean + half, rel=1e-6))
    dmd = _row(store["board"].measured, "digits", "dmd")  # 0.7 and 0.45: s = 0.25 / sqrt(2), s / sqrt(2) = 0.125
    assert (dmd["final_ci95_low"], dmd["final_ci95_high"]) == (pytest.approx(0.575 - 12.706205 * 0.125, rel=1e-6),
                                                               pytest.approx(0.575 + 12.706205 * 0.125, rel=1e-6))
    one = _row(store["board"].measured, "cifar10", "sid")  # one seed: no interval
    assert math.isnan(one["final_ci95_low"]) and math.isnan(one["final_ci95_high"])


def test_every_metric_a_column_and_the_final_sample_size(store):
    board = store["board"].measured
    dmd2 = _row(board, "cifar10", "dmd2")
    assert dmd2["final_mean"] == pytest.approx((2.9 + 3.3) / 2) and dmd2["final_fid"] == pytest.approx((2.9 + 3.3) / 2)
    # the final evaluation's values (_final) win over the curve's last ones
    assert dmd2["final_fd_dinov2"] == pytest.approx(110.0)
    assert (dmd2["final_precision"], dmd2["final_recall"]) == (pytest.approx(0.65), pytest.approx(0.525))
    # each value's 95% interval over the 2 seeds, by hand: 100 and 120 -> s / sqrt(2) = 10; 0.6 and 0.7 -> 0.05
    assert (dmd2["final_fd_dinov2_ci95_low"], dmd2["final_fd_dinov2_ci95_high"]) == (
        pytest.approx(110 - 12.706205 * 10, rel=1e-6), pytest.approx(110 + 12.706205 * 10, rel=1e-6))
    assert (dmd2["final_precision_ci95_low"], dmd2["final_precision_ci95_high"]) == (
        pytest.approx(0.65 - 12.706205 * 0.05, rel=1e-6), pytest.approx(0.65 + 12.706205 * 0.05, rel=1e-6))
    assert dmd2["final_images"] == 10_000 and bool(dmd2["proxy"]) is True
    assert (dmd2["final_ci95_low"], dmd2["final_ci95_high"]) == (pytest.approx(3.1 - 12.706205 * 0.2, rel=1e-6),
                                                                 pytest.approx(3.1 + 12.706205 * 0.2, rel=1e-6))
    sid = _row(board, "cifar10", "sid")
    assert sid["final_images"] == 50_000 and bool(sid["proxy"]) is False
    assert math.isnan(sid["final_fd_dinov2"]) and sid["final_fid"] == 2.5
    digits = _row(board, "digits", "sid")  # no tag, no setting logged: unknown, not a guess
    assert pd.isna(digits["final_images"]) and pd.isna(digits["proxy"])
    assert digits["final_fd_pixel"] == pytest.approx((0.52 + 0.41 + 0.44) / 3) and math.isnan(digits["final_fid"])


def test_t_quantile():
    # a printed table's 0.975 quantiles (two-sided 95%)
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042, 120: 1.980}
    for dof, t in table.items():
        assert lb.t_quantile(0.95, dof) == pytest.approx(t, abs=6e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 3, 7, 8, 29, 200):
        for level in (0.5, 0.9, 0.95, 0.99):
            assert lb.t_quantile(level, dof) == pytest.approx(scipy_stats.t.ppf((1 + level) / 2, dof), rel=1e-9)
    assert lb.mean_interval([1.0, 2.0, 3.0]) == (pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-6),
                                                 pytest.approx(2 + 4.302653 / math.sqrt(3), rel=1e-6))
    assert all(math.isnan(x) for x in lb.mean_interval([1.0]))


def test_metric_at_budget_fractions(store):
    sid = _row(store["board"].measured, "digits", "sid")
    # fraction 0.25 - 1e-12 counts as 25% (tolerance 1e-9)
    assert sid["metric_at_25"] == pytest.approx((2.0 + 4.0 + 1.0) / 3)
    assert sid["metric_at_50"] == pytest.approx((1.0 + 0.7 + 0.74) / 3)
    assert sid["metric_at_100"] == pytest.approx((0.5 + 0.4 + 0.45) / 3)  # the curve's sample size, not _final
    dmd = _row(store["board"].measured, "digits", "dmd")
    # 0.24 < 0.25: the first evaluation at >= 25% is the one at 50%
    assert dmd["metric_at_25"] == pytest.approx((1.0 + 0.8) / 2)
    assert dmd["metric_at_50"] == pytest.approx((1.0 + 0.8) / 2)
    assert dmd["metric_at_100"] == pytest.approx((0.7 + 0.45) / 2)


def test_compute_to_reach_the_teacher(store):
    sid = _row(store["board"].measured, "digits", "sid")
    # 1.5 x 0.5 = 0.75: seed 0 first at 0.6 (fraction 0.75), seed 1 at 0.7 (0.5), seed 2 at 0.74 (0.5)
    assert sid["flops_to_1.5x"] == pytest.approx((0.75 + 0.5 + 0.5) / 3 * 1e12)
    assert sid["kimg_to_1.5x"] == pytest.approx((75 + 50 + 50) / 3)
    assert sid["passes_to_1.5x"] == pytest.approx((0.75 + 0.5 + 0.5) / 3 * 1.1e6)
    assert sid["seeds_reached_1.5x"] == 3
    # 1.0 x 0.5: seed 0 at 0.5 (equal counts, fraction 1), seed 1 at 0.5 (0.75), seed 2 at 0.45 (0.75)
    assert sid["flops_to_1.0x"] == pytest.approx((1.0 + 0.75 + 0.75) / 3 * 1e12)
    assert sid["kimg_to_1.0x"] == pytest.approx((100 + 75 + 75) / 3)
    assert sid["seeds_reached_1.0x"] == 3
    dmd = _row(store["board"].measured, "digits", "dmd")
    assert dmd["flops_to_1.5x"] == pytest.approx(1e12) and dmd["seeds_reached_1.5x"] == 2  # 0.7 and 0.45, both at the end
    # seed 0 never gets to 0.5 (last 0.7): no mean, and one seed of two got there
    assert math.isnan(dmd["flops_to_1.0x"]) and math.isnan(dmd["kimg_to_1.0x"]) and math.isnan(dmd["passes_to_1.0x"])
    assert dmd["seeds_reached_1.0x"] == 1


def test_log_metric_area(store):
    sid = _row(store["board"].measured, "digits", "sid")
    s0 = 0.25 * ((ln(8) + ln(2)) / 2 + (ln(2) + ln(1)) / 2 + (ln(1) + ln(0.6)) / 2 + (ln(0.6) + ln(0.5)) / 2)
    s1 = 0.25 * ((ln(8) + ln(4)) / 2 + (ln(4) + ln(0.7)) / 2 + (ln(0.7) + ln(0.5)) / 2 + (ln(0.5) + ln(0.4)) / 2)
    s2 = 0.25 * ((ln(8) + ln(1)) / 2 + (ln(1) + ln(0.74)) / 2 + (ln(0.74) + ln(0.45)) / 2 + (ln(0.45) + ln(0.45)) / 2)
    assert sid["log_area"] == pytest.approx((s0 + s1 + s2) / 3, rel=1e-9)
    dmd = _row(store["board"].measured, "digits", "dmd")
    # the first value (6) is held from fraction 0 to its evaluation at 0.05
    d0 = 0.05 * ln(6) + 0.19 * (ln(6) + ln(3)) / 2 + 0.26 * (ln(3) + ln(1.0)) / 2 + 0.5 * (ln(1.0) + ln(0.7)) / 2
    d1 = 0.05 * ln(6) + 0.19 * (ln(6) + ln(2)) / 2 + 0.26 * (ln(2) + ln(0.8)) / 2 + 0.5 * (ln(0.8) + ln(0.45)) / 2
    assert dmd["log_area"] == pytest.approx((d0 + d1) / 2, rel=1e-9)


def test_throughput_nfe_teacher_and_labels(store):
    sid = _row(store["board"].measured, "digits", "sid")
    assert sid["images_per_s"] == pytest.approx((1000 * 100 / 200 + 1000 * 100 / 250 + 1000 * 100 / 400) / 3)
    assert sid["flops_per_s"] == pytest.approx((1e12 / 200 + 1e12 / 250 + 1e12 / 400) / 3)
    assert sid["nfe"] == 1
    assert (sid["teacher_metric"], sid["teacher_metric_source"]) == (0.5, "measured")
    assert sid["code_versions"] == "abc123;abc124+dirty"
    assert sid["budget"] == "flops 1e+12" and sid["bench"] == "b1" and sid["settings"] == "set-sid"
    ids = store["ids"]
    assert sid["run_ids"] == ";".join(ids["sid", s] for s in (0, 1, 2))
    c10 = _row(store["board"].measured, "cifar10", "sid")
    assert (c10["teacher_metric"], c10["teacher_metric_source"]) == (1.97, "published")  # never shown as measured
    assert c10["metric"] == "fid" and c10["n_seeds"] == 1 and math.isnan(c10["final_std"])
    assert c10["final_mean"] == 2.5 and c10["kimg_to_1.5x"] == 100.0  # 2.5 <= 1.5 x 1.97 at the end


def test_the_final_is_compared_with_the_teacher_at_its_own_size():
    curve_only = {"eval/fd_pixel": 0.15, "teacher/fd_pixel": 0.146}
    assert lb.final_teacher_reference(curve_only, "fd_pixel") == (0.146, "measured")
    # an end on more images than the curve: a measurement at that size, else the published figure, else unknown
    end = {**curve_only, "eval/fd_pixel_final": 0.0997}
    assert math.isnan(lb.final_teacher_reference(end, "fd_pixel")[0])
    assert lb.final_teacher_reference({**end, "teacher/fd_pixel_final": 0.0928}, "fd_pixel") == (0.0928, "measured")
    assert lb.final_teacher_reference({**end, "teacher/fd_pixel_published": 0.09}, "fd_pixel") == (0.09, "published")


def test_csv_columns_rows_and_published_kept_apart(store):
    out = store["out"]
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board.columns) == COLUMNS
    assert len(board) == 4 and set(board["source"]) == {"measured"}
    # best final first within a dataset
    assert list(board[board["dataset"] == "digits"]["method"]) == ["sid", "dmd"]
    c10 = board[board["dataset"] == "cifar10"]
    assert pd.isna(c10[c10["method"] == "sid"]["final_std"]).all()  # one seed: empty
    published = pd.read_csv(out / "leaderboard_published.csv", dtype={"source": str})
    assert list(published.columns) == ["source", "dataset", "method", "nfe", "metric", "value", "data"]
    # only the datasets read (digits has no published figures; cifar10's thirteen rows)
    assert set(published["dataset"]) == {"cifar10"} and len(published) == 13
    assert published["source"].str.startswith("published (arXiv:").all()
    sid = published[(published["method"] == "SiD (alpha 1.2)")].iloc[0]
    assert (sid["nfe"], sid["value"], sid["data"], sid["source"]) == (1, 1.923, "DF", "published (arXiv:2404.04057)")
    edm = published[published["method"] == "EDM teacher"].iloc[0]
    assert edm["source"] == "published (arXiv:2206.00364)" and edm["nfe"] == 35  # the id keeps its trailing zeros
    pd_rows = published[published["method"] == "progressive distillation"].sort_values("nfe")
    assert list(pd_rows["nfe"]) == [1, 2, 4, 8] and list(pd_rows["value"]) == [9.12, 4.51, 3.00, 2.57]
    assert not set(published["method"]) & set(board["method"])
    runs = pd.read_csv(out / "leaderboard_runs.csv")
    assert len(runs) == 8  # the eight finished runs, one line each


def test_published_reference_file():
    every = lb.load_published()
    assert set(every["dataset"]) == {"cifar10", "cifar10-cond", "imagenet64", "ffhq64", "afhqv2-64"}
    assert not every.duplicated(["dataset", "method", "nfe"]).any()  # one row per (method, NFE)
    assert every["data"].isin(["", "DF", "R", "P"]).all()
    in64 = every[every["dataset"] == "imagenet64"].set_index(["method", "nfe"])["value"]
    assert in64["DMD2 (+GAN resumed)", 1] == 1.28 and in64["consistency distillation (LPIPS)", 2] == 4.70
    assert in64["EDM teacher", 79] == 2.44


def test_pngs_are_valid_images(store):
    out = store["out"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["cifar10-fid-curves.png", "cifar10-fid-samples.png", "digits-fd_pixel-curves.png", "digits-fd_pixel-samples.png"]
    for name in pngs:
        path = out / name
        assert path.stat().st_size > 0 and path in store["board"].paths
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    # the mosaic shows seed 0's last grid (red), not its earlier ones (blue)
    px = np.asarray(Image.open(out / "digits-fd_pixel-samples.png").convert("RGB")).astype(int)
    red = (px[..., 0] > 240) & (px[..., 1] < 15) & (px[..., 2] < 15)
    blue = (px[..., 2] > 240) & (px[..., 0] < 15) & (px[..., 1] < 15)
    assert red.sum() > 100 and blue.sum() == 0


def test_print_leaderboard(store):
    from rich.console import Console

    buf = io.StringIO()
    lb.print_leaderboard(store["board"], Console(file=buf, width=300, color_system=None))
    text = buf.getvalue()
    assert "sid" in text and "dmd" in text
    assert "Published figures (from the papers, not measured here)" in text and "SiD²A" in text
    assert "1.97 (published)" in text and "0.5 (measured)" in text
    assert "not FINISHED" in text
    assert "10,000 proxy" in text and "50,000" in text and "95% CI" in text and "[-1.013, 2.163]" in text
    assert "fd_dinov2" in text and "precision" in text and "recall" in text  # the cifar10 table's other metrics


def test_bench_and_experiment_filters(store, tmp_path):
    board = lb.build_leaderboard(store["uri"], tmp_path / "b1", bench="b1")
    assert list(board.measured["method"]) == ["sid"] and board.measured["n_seeds"].iloc[0] == 3
    assert board.skipped == [store["ids"]["sid", 3]]
    digits = lb.build_leaderboard(store["uri"], tmp_path / "digits", experiments=["digits"])
    assert set(digits.measured["dataset"]) == {"digits"} and digits.published.empty
    from sidbench.errors import InputError

    # an unknown bench or experiment is an error that writes nothing (a committed leaderboard stays)
    committed = tmp_path / "committed"
    committed.mkdir()
    (committed / "leaderboard.csv").write_text("kept\n")
    with pytest.raises(InputError, match=r"--bench no-such-bench: no runs of this bench .*benches there: b1"):
        lb.build_leaderboard(store["uri"], committed, bench="no-such-bench")
    with pytest.raises(InputError, match="no MLflow experiment 'nope'"):
        lb.build_leaderboard(store["uri"], committed, experiments=["nope"])
    assert [p.name for p in committed.iterdir()] == ["leaderboard.csv"] and (committed / "leaderboard.csv").read_text() == "kept\n"


def test_several_benches_are_read_together(store, tmp_path):
    """`--bench` repeated (a derived and a tuned bench side by side): the union of their runs, and an
    unknown id among them is still one error that writes nothing."""
    from sidbench.errors import InputError

    both = lb.build_leaderboard(store["uri"], tmp_path / "both", bench=["b1", "only-running"])
    assert list(both.measured["method"]) == ["sid"] and both.measured["n_seeds"].iloc[0] == 3
    assert sorted(both.skipped) == sorted([store["ids"]["sid", 3], store["ids"]["sid", 4]])  # one unfinished run of each
    with pytest.raises(InputError, match=r"--bench nope: no runs of this bench"):
        lb.build_leaderboard(store["uri"], tmp_path / "none", bench=["b1", "nope"])
    assert not (tmp_path / "none").exists()


def test_a_bench_without_finished_runs_writes_nothing(store, tmp_path):
    from sidbench.errors import InputError

    with pytest.raises(InputError, match=r"no FINISHED runs \(1 not FINISHED\).*nothing written"):
        lb.build_leaderboard(store["uri"], tmp_path / "out", bench="only-running")
    assert not (tmp_path / "out").exists()


def test_the_command_writes_under_output_root_by_default(store, tmp_path, monkeypatch, capsys):
    from sidbench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "--bench", "b1", f"tracking.uri={store['uri']}", "output_root=elsewhere"]) == 0
    assert (tmp_path / "elsewhere" / "leaderboard" / "leaderboard.csv").is_file()
    assert main(["leaderboard", "--bench", "nope", f"tracking.uri={store['uri']}"]) == 1
    assert "no runs of this bench" in capsys.readouterr().err
    assert main(["leaderboard", "--bench", "b1", "--bench", "only-running", "--out", "two", f"tracking.uri={store['uri']}"]) == 0
    runs = pd.read_csv(tmp_path / "two" / "leaderboard_runs.csv")
    assert sorted(runs["seed"]) == [0, 1, 2]  # b1's finished runs; only-running has none


# -- the pure functions, directly --------------------------------------------------------------------
def _points(fractions, values) -> pd.DataFrame:
    return pd.DataFrame({"step": range(len(values)), "fraction": fractions, "kimg": [10 * f for f in fractions],
                         "flops": [1e9 * f for f in fractions], "passes": fractions, "seconds": fractions, "value": values})


def test_curve_helpers():
    class M:
        def __init__(self, step, value):
            self.step, self.value = step, value

    curve = lb.curve_frame("r", {"eval/m": [M(0, 4.0), M(10, 2.0)], "budget/fraction": [M(0, 0.0), M(10, 1.0), M(10, 1.0)],
                                 "kimg": [M(0, 0.0), M(5, 0.5), M(10, 1.0)], "eval/m_final": [M(10, 1.5)]})
    assert len(curve) == 2 + 2 + 3 + 1  # the repeated (10, budget/fraction) counts once
    pts = lb.evaluation_points(curve, "m")
    assert list(pts["step"]) == [0, 10] and list(pts["value"]) == [4.0, 2.0] and list(pts["kimg"]) == [0.0, 1.0]
    assert lb.final_metric(curve, "m") == 1.5
    assert lb.final_metric(curve[curve["key"] != "eval/m_final"], "m") == 2.0
    assert lb.evaluation_points(curve, "other").empty

    p = _points([0.0, 0.2499, 0.25 - 1e-10, 1.0], [5.0, 4.0, 3.0, 2.0])
    assert lb.metric_at_fraction(p, 0.25) == 3.0 and lb.metric_at_fraction(p, 1.0) == 2.0
    assert math.isnan(lb.metric_at_fraction(_points([0.0, 0.5], [5.0, 4.0]), 1.0))
    assert lb.first_reaching(p, 4.0)["fraction"] == 0.2499 and lb.first_reaching(p, 1.0) is None
    assert lb.first_reaching(p, 1.5 * 2.0)["value"] == 3.0  # 1.5 x 2.0 = 3.0 exactly: equal counts
    assert lb.log_metric_area(_points([0.0, 0.5, 1.0], [4.0, 2.0, 1.0])) == pytest.approx(
        0.5 * (ln(4) + ln(2)) / 2 + 0.5 * (ln(2) + ln(1)) / 2)
    assert lb.log_metric_area(_points([0.5, 1.0], [4.0, 2.0])) == pytest.approx(0.5 * ln(4) + 0.5 * (ln(4) + ln(2)) / 2)
    assert lb.last_sample_grid(["samples/kimg00100.000.png", "samples/kimg01000.500.png", "samples/kimg00000.000.png", "x.txt"]) \
        == "samples/kimg01000.500.png"
    assert lb.last_sample_grid([]) is None


def test_mean_curve_lines_up_seeds_by_index():
    a = _points([0.0, 0.5, 1.0], [4.0, 2.0, 1.0])
    b = _points([0.0, 0.5, 1.0], [6.0, 1.0, 0.5])
    c = mean_curve([a, b], "kimg")
    assert list(c["x"]) == [0.0, 5.0, 10.0]
    assert list(c["mean"]) == [5.0, 1.5, 0.75] and list(c["min"]) == [4.0, 1.0, 0.5] and list(c["max"]) == [6.0, 2.0, 1.0]
    assert len(mean_curve([a, b.iloc[:2]], "kimg")) == 2  # the points every seed has


def test_panels_use_a_log_x_axis_when_points_span_decades():
    from sidbench.harness.plots import log_x

    # log-spaced evaluations (2% of the budget first), and a method that starts at its charged precomputation
    assert log_x([0.0, 8e10, 5.6e11, 1e12, 4e12, 6.8e11, 4e12])
    assert not log_x([0.0, 10.0, 20.0, 40.0])  # evenly spaced points read best on a linear axis


def test_a_methods_rows_share_a_colour_and_its_tuned_rows_are_dashed():
    from sidbench.harness.plots import Series, line_styles

    series = [Series("dmd derived [a]", [], "dmd"), Series("sid", [], "sid"), Series("dmd tuned [b]", [], "dmd", dashed=True),
              Series("toy", [])]
    assert line_styles(series) == [("C0", "-"), ("C1", "-"), ("C0", "--"), ("C2", "-")]
    assert [c for c, _ in line_styles([Series(f"m{i}", [], f"m{i}") for i in range(11)])][-1] == "C0"  # tab10 wraps


def test_a_methods_rows_are_labelled_with_their_settings_source():
    from sidbench.harness.leaderboard import _row_label

    board = pd.DataFrame({"dataset": ["digits"] * 3, "method": ["ect", "ect", "sid"], "settings": ["9a462baf3f", "0f964544aa", "a8a6"],
                          "settings_source": ["tuned:ect-digits-flops2e12-s0-stages", "derived", "derived"]})
    assert [_row_label(r, board) for _, r in board.iterrows()] == ["ect tuned [9a462baf]", "ect derived [0f964544]", "sid"]
    assert _row_label(board.drop(columns="settings_source").iloc[1], board) == "ect derived [0f964544]"  # an older board
