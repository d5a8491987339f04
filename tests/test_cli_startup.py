"""The command line answers `--help` and `sidbench list` without importing torch, MLflow or the trainer."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from sidbench.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = [m for m in ("torch", "mlflow", "sidbench.trainer", "pandas") if m in sys.modules]
print(json.dumps(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["bench", "--help"], ["leaderboard", "--help"],
                                  ["fid", "--help"], ["stats", "--help"], ["ui", "--help"], ["teacher", "train", "--help"],
                                  ["tune", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert "usage: sidbench" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []


BUILTIN_METHODS = ("sid", "dmd", "dmd2", "progressive", "consistency")
BUILTIN_SAMPLERS = ("one_step", "heun", "euler", "consistency")


def _list(env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, "list"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


def test_list_imports_nothing_heavy_and_names_every_method() -> None:
    """The built-ins are declared lazily (sidbench/methods/__init__.py, sidbench/samplers.py):
    listing them imports none."""
    out, heavy = _list({"SIDBENCH_PLUGINS": ""})
    assert heavy == []
    rows = {line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")}
    assert set(BUILTIN_METHODS) <= rows and set(BUILTIN_SAMPLERS) <= rows, out
    assert "EDM's deterministic Heun sampler" in out
    assert "Score identity Distillation" in out and "digits (shipped)" in out
    assert {"fd_pixel", "fd_digits", "fid"} <= rows  # the metrics' table, from their registry


def test_list_names_a_plugin_from_the_environment() -> None:
    out, _ = _list({"SIDBENCH_PLUGINS": "sidbench.testing.staged"})  # the plugin itself imports torch
    assert "staged-toy" in out and "test method: two stages" in out
    assert all(name in out for name in BUILTIN_METHODS)
