"""The benchmark suite is not part of the test run (it times, and takes long), but it must stay
runnable: every file under benchmarks/ compiles, and pytest collects every benchmark in it."""
from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_file_compiles() -> None:
    files = sorted(BENCHMARKS.glob("*.py"))
    assert len(files) > 5
    for path in files:
        py_compile.compile(str(path), doraise=True)


def test_pytest_collects_every_benchmark() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", "-o", "addopts=",
                           str(BENCHMARKS)], capture_output=True, text=True, timeout=300, cwd=BENCHMARKS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stdout.lower(), proc.stdout
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert {line.split("::")[0] for line in collected} >= {
        f"benchmarks/{p.name}" for p in BENCHMARKS.glob("test_bench_*.py")}
