"""An evaluation's images made by all the ranks of a multi-process run (`shared_batches`, the
`Evaluator` that `sidbench run` builds on every rank, streamed into its metrics or held to be
scored later) are the images one process makes, bit for bit, and rank 0 scores them all
(tests/eval/shared_eval_worker.py, under torchrun on the CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "shared_eval_worker.py"


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_makes_its_share_and_rank0_scores_the_images_one_process_makes(world: int, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           f"--log-dir={tmp_path / 'logs'}", str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    zero = reports[0]
    assert zero["world"] == world
    assert zero["batch_sizes"] == [5, 5, 5, 5, 3] and zero["alone_calls"] == [5, 5, 5, 5, 3]
    assert zero["equal_to_one_process"]
    # batch k by rank k mod world: each rank ran the generator on its own batches only
    for r, report in enumerate(reports):
        assert report["shared_calls"] == [[5, 5, 5, 5, 3][k] for k in range(5) if k % world == r]
        if r:
            assert report["shared_batches"] == 0 and report["shared_evaluator"] == {}
            assert report["single_metric_stopping_early"] == {}
            assert report["held_batches"] == 0 and report["held_scored"] == {}
    # rank 0 scores what one process scores, exactly (integer pixel sums)
    assert zero["shared_evaluator"] == zero["one_process_evaluator"]
    assert zero["shared_evaluator"]["eval/count"] == 23 and zero["shared_evaluator"]["eval/total"] > 0
    assert zero["single_metric_stopping_early"] == {"eval/first": zero["one_process_evaluator"]["eval/first"]}
    # made first and scored after (the run's end): the same images, the same values
    assert zero["held_batches"] == 5 and zero["held_equal_to_shared"]
    assert zero["held_scored"] == zero["one_process_evaluator"]
