"""A run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sidbench.testing.tiny import tiny_overrides


def sidbench(args: list[str], cwd: Path, **popen: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sidbench.cli", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def final_weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return {**ckpt["networks"], "ema": ckpt["ema"]}


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_teacher: Path, run_env: Path) -> None:
    common = tiny_overrides(tiny_teacher, **{"trainer.kimg": 0.16, "trainer.checkpoint_every_kimg": 0.032,
                                             "trainer.eval_every_kimg": 0.08})
    full = sidbench([*common, "run_name=full"], run_env)
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out

    killed = sidbench([*common, "run_name=killed"], run_env)
    ckpt = run_env / "runs" / "digits" / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    seen = torch.load(ckpt, weights_only=True)["progress"]["images_seen"]
    assert 0 < seen < 160

    resumed = sidbench([*common, f"resume={ckpt.parent}"], run_env)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed" in out

    a, b = final_weights(run_env / "runs" / "digits" / "full"), final_weights(ckpt.parent)
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
