"""DMD as a plugin: its calls and cost, the regression pairs (made once, charged, cached, reused at
their recorded cost), and the refusals for pairs or distances that do not fit the teacher."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.config import ConfigError, compose
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher
from sidbench.testing.gaussian import GaussianTeacher, random_gaussian
from sidbench.testing.tiny import make_tiny_teacher
from sidbench.trainer.compute import ComputeCounter
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import Trainer

CPU = torch.device("cpu")
# The affine generator reaches the target Gaussian: Frechet distance 1.44 at the start, 0.0025 after
# 25.6 kimg (measured). DMD has no TTUR, so the fake score must track the generator by its rate:
# with equal rates the distribution-matching gradient goes stale (0.43-0.50 with the regression,
# 1.70 without it, measured), with the generator 5x slower it converges. The regression pulls
# toward the teacher's Heun map, exact for a Gaussian up to its 18-step discretisation.
GAUSSIAN_TOLERANCE = 0.02


def make(teacher_path: Path, *overrides: str):
    cfg = compose(["method=dmd", "dataset=digits", f"dataset.teacher.path={teacher_path}",
                   "method.num_teacher_samples=8", "method.teacher_sampler_steps=3", *overrides])
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    dmd = METHODS.get("dmd")(teacher, cfg.method, CPU, cfg)
    counter = ComputeCounter()
    counter.attach({**dmd.frozen_networks(), **dmd.networks()})
    return dmd, StepContext(dmd.networks(), dmd.optimizers(), CPU, batch=4, counter=counter), counter


def test_pairs_are_charged_when_made_and_at_their_recorded_cost_when_reused(tiny_teacher: Path, run_env: Path) -> None:
    dmd, ctx, counter = make(tiny_teacher)
    with ctx.precompute():
        dmd.prepare(ctx)
    made = counter.take()
    # 8 pairs of a 3-step Heun sampler: 2 x 3 - 1 = 5 teacher calls each, nothing else
    assert made.passes == made.teacher_passes == 8 * 5 and made.flops > 0
    assert dmd.pairs.noise.shape == dmd.pairs.images.shape == (8, 1, 8, 8)
    # the pair is the teacher's Heun sample of its noise
    from sidbench.diffusion import heun_sample

    torch.testing.assert_close(heun_sample(dmd.teacher.net, dmd.pairs.noise[:2], None, num_steps=3), dmd.pairs.images[:2])
    again, ctx2, counter2 = make(tiny_teacher)
    with ctx2.precompute():
        again.prepare(ctx2)
    reused = counter2.take()
    assert (reused.passes, reused.teacher_passes) == (made.passes, made.teacher_passes)
    assert reused.flops == pytest.approx(made.flops)
    assert torch.equal(again.pairs.images, dmd.pairs.images)


def test_an_iteration_costs_what_a_hand_count_says(tiny_teacher: Path, run_env: Path) -> None:
    dmd, ctx, counter = make(tiny_teacher)
    with ctx.precompute():
        dmd.prepare(ctx)
    counter.take()
    with counter.iteration():
        logs = dmd.train_step(ctx)
    # generator update: G forward and backward on z (3), teacher and fake score without a graph
    # (1 + 1), G forward and backward on the pairs' noise (3); fake-score update (3)
    assert counter.calls == [("generator", 4, True, True), ("teacher", 4, False, False), ("fake_score", 4, False, False),
                             ("generator", 4, True, True), ("fake_score", 4, True, True)]
    assert counter.take().passes == 11 * 4
    assert {"dm", "regression", "fake_score"} <= set(logs)


def test_lpips_on_a_one_channel_teacher_needs_a_stated_adaptation(tiny_teacher: Path, refused) -> None:  # noqa: ANN001
    line = refused("method=dmd", f"dataset.teacher.path={tiny_teacher}", "method.regression.distance=lpips")
    assert "method.regression.lpips_adapt_gray=true" in line


def test_pairs_made_by_another_teacher_are_refused(tiny_teacher: Path, run_env: Path, tmp_path: Path) -> None:
    dmd, ctx, _ = make(tiny_teacher)
    with ctx.precompute():
        dmd.prepare(ctx)
    from sidbench.methods.baselines.teacher_samples import cache_path

    pairs_file = cache_path(dmd.spec)
    assert pairs_file.is_file()
    same, _, _ = make(tiny_teacher, f"method.teacher_samples_file={pairs_file}")
    assert torch.equal(same.pairs.images, dmd.pairs.images)
    other = make_tiny_teacher(tmp_path / "other.safetensors", model_channels=16)
    with pytest.raises(ConfigError, match="not by this run's") as e:
        make(other, f"method.teacher_samples_file={pairs_file}")
    assert "\n" not in str(e.value)


def test_dmd_drives_an_affine_generator_to_the_target_gaussian(tmp_path: Path, run_env: Path) -> None:
    torch.manual_seed(0)
    mu, cov = random_gaussian(4, seed=0)
    teacher = GaussianTeacher(mu, cov)
    cfg = compose(["method=dmd", "method.lr=5e-2", "method.lr_generator=1e-2", "method.warmup_iterations=0", "method.weight_decay=0",
                   "method.num_teacher_samples=2048", "method.teacher_sample_batch=2048"])
    dmd = METHODS.get("dmd")(teacher, cfg.method, CPU, cfg)
    start = teacher.distance(dmd.generator)
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 25.6, "batch": 256, "checkpoint_every_kimg": 0, "eval_every_kimg": 0})
    Trainer(trainer_cfg, dmd, tmp_path, CPU).train()
    end = teacher.distance(dmd.generator)
    assert start > 1.0
    assert end < GAUSSIAN_TOLERANCE, f"DMD left the affine generator at Frechet distance {end:.4f} (start {start:.3f})"
