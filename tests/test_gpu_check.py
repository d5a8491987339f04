"""benchmarks/gpu_check.py --smoke on the CPU: every part of the prepared GPU script runs and writes
its rows (the digits network at micro-batch 2; compile with the eager backend)."""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_writes_every_part(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    from sidbench.trainer import speed

    monkeypatch.setattr(speed, "COMPILE_OPTIONS", speed.COMPILE_OPTIONS)  # restored after --smoke changes it
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = [r["part"] for r in rows]
    assert parts[:len(mod.PRECISIONS)] == ["precision"] * len(mod.PRECISIONS)
    assert parts.count("ffhq_memory") == 2 and parts.count("compile") == 2 and parts.count("optimizer") == 2
    adam, radam = [r for r in rows if r["part"] == "optimizer"]
    assert adam["overrides"] == ["trainer.optimizer_kernel=as_built"]
    assert radam["method"] == "consistency" and "trainer.optimizer_kernel=compiled" in radam["overrides"]
    assert radam["passes_per_iteration"] == radam["counted_passes_per_iteration"] > 0
    graphs = [r for r in rows if r["part"] == "cuda_graphs"]
    assert len(graphs) == 1 and graphs[0]["compile"] and graphs[0]["overrides"] == ["trainer.compile_mode=reduce-overhead"]
    methods = [r for r in rows if r["part"] == "methods"]
    shipped = ["sid", "consistency", "dmd", "dmd2", "ect", "f_distill", "progressive", "scd", "sida", "uni_instruct"]
    assert [r["method"] for r in methods] == shipped  # one row per distinct iteration; no plugin another test registered
    assert all(r["status"] == "measured" for r in rows), [r["status"] for r in rows]
    for r in methods:  # the replay repeats exactly the passes the compute counter charged for that iteration
        assert r["passes_per_iteration"] > 0 and r["passes_per_iteration"] == r["counted_passes_per_iteration"], r
        assert r["seconds_per_iteration"] > 0 and r["passes_seconds"] > 0
    for r in rows:
        if "method" not in r:  # the rows of one configuration's iteration (the others are ratios)
            assert r["seconds_per_iteration"] > 0 and r["flops_per_iteration"] > 0 and r["mfu"] is None  # no peak on a CPU
    with open(tmp_path / "gpu_check.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
