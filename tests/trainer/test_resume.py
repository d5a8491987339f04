"""A run killed with SIGKILL at a known iteration and resumed ends bit-identical to an
uninterrupted run: for SiD, and for a method with stages (resumed across the stage boundary),
LR schedules, gradient clipping, a joint update and an average of its own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sidbench.testing.tiny import tiny_overrides

def sidbench(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidbench.cli", "run", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


def final_state(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    out = {**{f"net/{k}": v for k, v in ckpt["networks"].items()}, "ema": ckpt["ema"],
           **{f"frozen/{k}": v for k, v in ckpt["frozen"].items()}, **{f"avg/{k}": v for k, v in ckpt["averages"].items()}}
    for name, opt in ckpt["optimizers"].items():
        for i, state in opt["state"].items():
            out[f"opt/{name}/{i}"] = {k: torch.as_tensor(v) for k, v in state.items()}
    return out


def kill_resume_and_compare(common: list[str], run_env: Path, kill_env, plugins: str, kill_at: int,  # noqa: ANN001
                            boundary: int | None = None) -> None:
    plain = {**os.environ, "PYTHONUNBUFFERED": "1", "SIDBENCH_PLUGINS": plugins}
    full = sidbench([*common, "run_name=full"], run_env, plain)
    assert full.returncode == 0, full.stdout
    killed = sidbench([*common, "run_name=killed"], run_env, kill_env(kill_at, plugins))
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    killed_dir = run_env / "runs" / "digits" / "killed"
    progress = torch.load(killed_dir / "checkpoint.pt", weights_only=True)["progress"]
    assert 0 < progress["iteration"] < kill_at + 1
    if boundary is not None:  # the checkpoint is from before the boundary; the resumed run crosses it
        assert progress["iteration"] <= boundary and progress["stage"] == 0
    resumed = sidbench([*common, f"resume={killed_dir}"], run_env, plain)
    assert resumed.returncode == 0, resumed.stdout
    assert "resumed" in resumed.stdout

    a, b = final_state(run_env / "runs" / "digits" / "full"), final_state(killed_dir)
    assert a.keys() == b.keys()
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    if boundary is not None:
        assert torch.load(killed_dir / "checkpoint.pt", weights_only=True)["progress"]["stage"] == 1


@pytest.mark.slow
def test_sid_killed_at_iteration_5_then_resumed_matches_uninterrupted_run(tiny_teacher: Path, run_env: Path, kill_env) -> None:  # noqa: ANN001
    # 20 iterations of batch 8, checkpoints every 4: killed as iteration 5 starts (last checkpoint
    # after iteration 4), resumed from there
    common = tiny_overrides(tiny_teacher, **{"trainer.kimg": 0.16, "trainer.checkpoint_every_kimg": 0.032,
                                             "trainer.eval_every_kimg": 0.08})
    kill_resume_and_compare(common, run_env, kill_env, "", kill_at=5)


@pytest.mark.slow
def test_staged_method_resumed_across_its_stage_boundary_matches_uninterrupted_run(tiny_teacher: Path, run_env: Path,
                                                                                  kill_env) -> None:  # noqa: ANN001
    # 8 iterations of batch 8; the second stage starts at 32 images (iteration 4); checkpoints
    # every 2 iterations; killed as iteration 5 starts, so the last checkpoint (after iteration 4)
    # is still in stage 0 and the resumed run enters stage 1 itself
    common = tiny_overrides(tiny_teacher, **{"method": "staged-toy", "trainer.kimg": 0.064,
                                             "trainer.checkpoint_every_kimg": 0.016, "trainer.eval_every_kimg": 0.032})
    kill_resume_and_compare(common, run_env, kill_env, "sidbench.testing.staged", kill_at=5, boundary=4)


@pytest.mark.slow
def test_lr_anneal_resumed_across_a_stage_boundary_matches_uninterrupted_run(tiny_teacher: Path, run_env: Path,
                                                                          kill_env) -> None:  # noqa: ANN001
    # As above, with the budget's LR anneal on from the start: the scheduled generator's LR comes
    # back from its schedule, the unscheduled aux network's from its saved unannealed LR.
    common = tiny_overrides(tiny_teacher, **{"method": "staged-toy", "trainer.kimg": 0.064,
                                             "trainer.checkpoint_every_kimg": 0.016, "trainer.eval_every_kimg": 0.032,
                                             "trainer.lr_anneal.shape": "cosine", "trainer.lr_anneal.start": 0.0})
    kill_resume_and_compare(common, run_env, kill_env, "sidbench.testing.staged", kill_at=5, boundary=4)
