"""Evaluation cost of the default run: one evaluation against the training between two of them.

Target: evaluation under 10% of a default run's time. Measured in one run as the ratio
(one evaluation) / (the iterations of `trainer.eval_every_kimg`), so machine load cancels out.
Run: `pytest benchmarks/test_bench_eval.py -n 0 --benchmark-enable`.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from sidbench.config import compose
from sidbench.eval.evaluator import Evaluator
from sidbench.eval.factory import build_metric
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher
from sidbench.trainer.context import StepContext

TARGET = 0.10


@pytest.fixture(scope="module")
def default_run():
    cfg = compose([])  # the default: method=sid dataset=digits
    torch.set_num_threads(int(cfg.threads or torch.get_num_threads()))
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    sid = METHODS.get("sid")(teacher, cfg.method, torch.device("cpu"), cfg)
    ctx = StepContext(sid.networks(), sid.optimizers(), torch.device("cpu"), batch=cfg.trainer.batch)
    evaluator = Evaluator(build_metric(str(cfg.eval.metric), cfg), cfg.eval.num_samples, cfg.eval.batch_size,
                          teacher.shape, teacher.label_dim, torch.device("cpu"), cfg.eval.seed)
    sid.train_step(ctx)  # warm-up: Adam state, first-call costs
    return cfg, sid, ctx, evaluator


def test_evaluation_share_of_default_run(benchmark, default_run) -> None:  # noqa: ANN001
    cfg, sid, ctx, evaluator = default_run
    iterations = 3
    start = time.process_time()
    for _ in range(iterations):
        sid.train_step(ctx)
    per_iteration = (time.process_time() - start) / iterations
    between_evals = per_iteration * cfg.trainer.eval_every_kimg * 1000 / cfg.trainer.batch

    def evaluate() -> float:
        return evaluator(lambda z, labels: sid.sample(sid.generator, z, labels))[f"eval/{evaluator.metric.name}"]

    start = time.process_time()
    value = benchmark.pedantic(evaluate, rounds=3, warmup_rounds=1)
    rounds = 4 if benchmark.enabled else 1
    per_eval = (time.process_time() - start) / rounds
    share = per_eval / (per_eval + between_evals)
    benchmark.extra_info.update({
        "eval_seconds_cpu": per_eval, "training_seconds_between_evals_cpu": between_evals,
        "eval_share": share, "target": TARGET, "target_met": share <= TARGET, "loadavg": os.getloadavg(),
        "eval_samples": cfg.eval.num_samples, "eval_every_kimg": cfg.trainer.eval_every_kimg,
    })
    print(f"\nevaluation {per_eval:.2f} s CPU vs {between_evals:.1f} s of training between evaluations: "
          f"{share:.1%} of the run (target <= {TARGET:.0%})")
    assert value > 0
