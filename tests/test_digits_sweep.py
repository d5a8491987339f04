"""benchmarks/digits_sweep.py's reading of a run's metrics.jsonl (how the default's schedule was chosen)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("digits_sweep", Path(__file__).parents[1] / "benchmarks" / "digits_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def write_curve(path: Path, evals: list[tuple[float, float]], teacher: float = 0.2) -> None:
    lines = [{"teacher/fd_pixel": teacher, "eval/fd_pixel": evals[0][1], "kimg": evals[0][0], "seconds": 0.0}]
    lines += [{"eval/fd_pixel": v, "kimg": k, "seconds": 10 * k, "sec_per_kimg": 10.0} for k, v in evals[1:]]
    path.write_text("\n".join(json.dumps(d) for d in lines) + '\n{"kimg": 9')  # a last line cut by a kill


def test_summary_reads_the_curve_against_the_teacher(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_curve(path, [(0, 5.0), (8, 0.5), (16, 0.29), (24, 0.25), (32, 0.19), (40, 0.21)])
    r = sweep.summarize("a", path, "fd_pixel", at=[16, 30, 100])
    assert r["teacher"] == 0.2 and (r["kimg"], r["last"]) == (40, 0.21)
    assert r["ratio"] == pytest.approx(0.21 / 0.2)
    assert r["kimg_to_1.5x"] == 16 and r["kimg_to_teacher"] == 32  # first evaluations at or below
    # the evaluation nearest to each point, none where the run never came within 10% of it
    assert r["at"] == {16: 0.29, 30: 0.19, 100: None}


def test_the_end_is_read_against_the_teacher_at_its_own_size(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_curve(path, [(0, 5.0), (8, 0.5), (16, 0.21)])
    with path.open("a") as f:  # the run's end, on more images, with the teacher at that size
        f.write('\n{"kimg": 16, "eval/fd_pixel_final": 0.11, "teacher/fd_pixel_final": 0.1}\n')
    r = sweep.summarize("a", path, "fd_pixel", at=[16])
    assert r["ratio"] == pytest.approx(0.21 / 0.2) and r["final"] == 0.11 and r["final_ratio"] == pytest.approx(1.1)
    assert sweep.table([r], "fd_pixel", [16]).splitlines()[-1].endswith("| 0.1100 | 1.100 |")


def test_a_repeated_kimg_keeps_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_curve(path, [(0, 5.0), (8, 0.5), (8, 0.4)])  # a resumed run logs kimg 8 again
    curve, _ = sweep.read_curve(path)
    assert [d["eval/fd_pixel"] for d in curve] == [5.0, 0.4]


def test_runs_are_given_as_name_and_overrides() -> None:
    assert sweep.parse_runs(["base=", "lr=method.lr=2e-4 trainer.seed=1"]) == {
        "base": [], "lr": ["method.lr=2e-4", "trainer.seed=1"]}
    with pytest.raises(SystemExit, match="NAME=OVERRIDES"):
        sweep.parse_runs(["no-equals-sign"])
