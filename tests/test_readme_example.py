"""The README's example method runs as written: loaded through $SIDBENCH_PLUGINS, trained by
`sidbench run`, and its saved generator scored by `sidbench fid` with the recipe it wrote."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sidbench.testing.tiny import tiny_overrides

README = Path(__file__).resolve().parents[1] / "README.md"


def example_code() -> str:
    section = README.read_text().split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's 'Adding a method' section should hold exactly one python block"
    return blocks[0]


@pytest.mark.slow
def test_readme_example_method_trains_and_is_scored(tiny_teacher: Path, run_env: Path) -> None:
    (run_env / "my_method.py").write_text(example_code())
    # as the README says: run in the folder that holds my_method.py, nothing else on the path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"SIDBENCH_PLUGINS": "my_method"}
    run = subprocess.run([sys.executable, "-m", "sidbench.cli", "run", "method=regress", "run_name=example",
                          *tiny_overrides(tiny_teacher)], cwd=run_env, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    run_dir = run_env / "runs" / "digits" / "example"
    import json

    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    # 64 images: each a generator forward and backward (3) and 4 Heun steps of the teacher (7 NFE)
    assert "loss/regression" in last and last["compute/passes"] == 64 * (3 + 7) and last["compute/teacher_passes"] == 64 * 7
    fid = subprocess.run([sys.executable, "-m", "sidbench.cli", "fid", str(run_dir), "--num", "64", "--device", "cpu"],
                         cwd=run_env, env=env, capture_output=True, text=True, timeout=600)
    assert fid.returncode == 0, fid.stderr
    assert "regress" in fid.stderr and "one_step (sigma 80.0), 1 NFE" in fid.stderr


def test_a_missing_plugin_module_is_one_line(run_env: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"SIDBENCH_PLUGINS": "no_such_plugin"}
    proc = subprocess.run([sys.executable, "-m", "sidbench.cli", "run", "method=regress"], cwd=run_env, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SIDBENCH_PLUGINS names 'no_such_plugin'" in lines[0] and "Traceback" not in proc.stderr


def test_a_bad_setting_of_the_readme_example_is_one_line(run_env: Path) -> None:
    (run_env / "my_method.py").write_text(example_code())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"SIDBENCH_PLUGINS": "my_method"}
    proc = subprocess.run([sys.executable, "-m", "sidbench.cli", "run", "method=regress", "method.lr=abc"], cwd=run_env,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: method.lr=abc: must be a number > 0", proc.stderr
    shown = subprocess.run([sys.executable, "-m", "sidbench.cli", "run", "method=regress", "dry_run=true"], cwd=run_env,
                           env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "method:\n  name: regress\n  lr: 0.0001\n  sigma_init: 80.0\n  teacher_sampler_steps: 4\n" in shown.stdout


def test_the_readme_example_s_search_space_is_what_tune_searches(run_env: Path) -> None:
    (run_env / "my_method.py").write_text(example_code())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"SIDBENCH_PLUGINS": "my_method"}
    proc = subprocess.run([sys.executable, "-m", "sidbench.cli", "tune", "method=regress", "dataset=digits", "trials=2",
                           "budget.unit=kimg", "budget.value=0.01", "--dry-run"], cwd=run_env, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "space: method.lr log(1e-05,0.001), method.teacher_sampler_steps int(2,8)" in out
