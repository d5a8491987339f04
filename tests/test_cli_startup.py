"""The command line answers `--help` without importing torch, MLflow or the trainer."""
from __future__ import annotations

import json
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
heavy = [m for m in ("torch", "mlflow", "sidbench.trainer", "sidbench.errors", "pandas") if m in sys.modules]
print(json.dumps(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["bench", "--help"], ["leaderboard", "--help"],
                                  ["fid", "--help"], ["stats", "--help"], ["ui", "--help"], ["teacher", "train", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert "usage: sidbench" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
