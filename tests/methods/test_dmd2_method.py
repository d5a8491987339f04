"""DMD2 as a plugin: its calls and their cost, the TTUR, the GAN head's wiring, bad settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.config import ConfigError, compose
from sidbench.data.real import open_real_images
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher
from sidbench.testing.gaussian import GaussianTeacher, random_gaussian
from sidbench.trainer.compute import ComputeCounter
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import Trainer

CPU = torch.device("cpu")
# DMD2's generator reaches the target Gaussian: Frechet distance 1.44 at the start, 0.015 after
# 51.2 kimg at lr 5e-2 (measured); the tolerance leaves room for other seeds and platforms.
KIMG = 51.2
GAUSSIAN_TOLERANCE = 0.05


def make(teacher_path: Path, *overrides: str, batch: int = 4):
    cfg = compose(["method=dmd2", "dataset=digits", f"dataset.teacher.path={teacher_path}", *overrides])
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    dmd2 = METHODS.get("dmd2")(teacher, cfg.method, CPU, cfg)
    real = open_real_images(cfg.dataset, teacher.shape, teacher.label_dim) if dmd2.uses_real_data else None
    counter = ComputeCounter()
    counter.attach({**dmd2.frozen_networks(), **dmd2.networks()})
    ctx = StepContext(dmd2.networks(), dmd2.optimizers(), CPU, batch=batch, counter=counter, real_data=real)
    return dmd2, ctx, counter, cfg


def test_generator_and_critic_iterations_cost_what_a_hand_count_says(tiny_teacher: Path) -> None:
    dmd2, ctx, counter, _ = make(tiny_teacher)
    assert not dmd2.uses_real_data and set(dmd2.networks()) == {"generator", "fake_score"}
    ctx.iteration = 0  # a generator iteration (0 mod 5)
    with counter.iteration():
        dmd2.train_step(ctx)
    # generator update: G forward and backward (3); teacher and fake score forward without a
    # graph (1 + 1); critic update on the same x: fake score forward and backward (3)
    assert counter.calls == [("generator", 4, True, True), ("teacher", 4, False, False),
                             ("fake_score", 4, False, False), ("fake_score", 4, True, True)]
    assert counter.take().passes == (3 + 1 + 1 + 3) * 4
    ctx.iteration = 1  # a critic-only iteration: x made without a graph (1), fake score (3)
    with counter.iteration():
        dmd2.train_step(ctx)
    assert counter.calls == [("generator", 4, False, False), ("fake_score", 4, True, True)]
    assert counter.take().passes == (1 + 3) * 4


def test_the_generator_steps_every_ttur_th_iteration_and_the_critic_every_iteration(tiny_teacher: Path) -> None:
    dmd2, ctx, _, _ = make(tiny_teacher, "method.ttur=3", "method.warmup_iterations=0")
    moved = []
    for it in range(6):
        before = {k: next(n.parameters()).detach().clone() for k, n in dmd2.networks().items()}
        ctx.iteration = it
        dmd2.train_step(ctx)
        for sched in dmd2.schedulers().values():
            sched.step()
        moved.append({k: not torch.equal(before[k], next(n.parameters())) for k, n in dmd2.networks().items()})
    assert [m["generator"] for m in moved] == [True, False, False, True, False, False]
    assert all(m["fake_score"] for m in moved)


def test_gan_head_trains_with_the_fake_score_on_real_and_generated_images(tiny_teacher: Path) -> None:
    dmd2, ctx, counter, _ = make(tiny_teacher, "method.gan.enabled=true", "method.warmup_iterations=0")
    assert dmd2.uses_real_data and set(dmd2.networks()) == {"generator", "fake_score", "gan_head"}
    head = [p.detach().clone() for p in dmd2.gan_head.parameters()]
    ctx.iteration = 0
    with counter.iteration():
        logs = dmd2.train_step(ctx)
    # generator update adds the frozen fake score's logits call on x (forward, backward to the
    # input); the critic sees the generated, real and fake-logits inputs in one call of 3 x 4
    assert counter.calls == [("generator", 4, True, True), ("teacher", 4, False, False), ("fake_score", 4, False, False),
                             ("fake_score", 4, False, True), ("gan_head", 4, False, True),
                             ("fake_score", 12, True, True), ("gan_head", 8, True, True)]
    assert {"dm", "gan_generator", "fake_score", "gan_discriminator"} <= set(logs)
    # the head's loss is a sum of two softplus means: positive and finite
    assert 0 < float(logs["gan_discriminator"]) < 10
    assert any(not torch.equal(a, b) for a, b in zip(head, dmd2.gan_head.parameters()))
    assert {"logits_real", "logits_fake"} <= set(ctx.take_logs())


def test_published_imagenet_settings() -> None:
    cfg = compose(["method=dmd2", "dataset=imagenet64"])
    m, t = cfg.method, cfg.trainer
    assert (m.lr_generator, m.lr_fake_score, list(m.betas), m.weight_decay, m.warmup_iterations, m.grad_clip, m.ttur) == (
        2e-6, 2e-6, [0.9, 0.999], 0.01, 500, 10.0, 5)
    assert (m.sigma_gen, m.grid_points, m.dm_index_min, m.dm_index_max) == (80.0, 1000, 20, 980)
    assert (m.gan.enabled, m.gan.generator_weight, m.gan.discriminator_weight) == (False, 3e-3, 1e-2)
    assert (t.batch, t.precision, t.ema_halflife_kimg) == (280, "bf16", 0)


def test_bad_settings_are_refused_in_one_line(tiny_teacher: Path) -> None:
    with pytest.raises(ConfigError, match="method.ttur=0") as e:
        make(tiny_teacher, "method.ttur=0")
    assert "\n" not in str(e.value)
    teacher = GaussianTeacher(*random_gaussian(4))
    cfg = compose(["method=dmd2", "method.gan.enabled=true"])
    with pytest.raises(ConfigError, match="return_bottleneck"):
        METHODS.get("dmd2")(teacher, cfg.method, CPU, cfg)


def test_dmd2_drives_an_affine_generator_to_the_target_gaussian(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mu, cov = random_gaussian(4, seed=0)
    teacher = GaussianTeacher(mu, cov)
    cfg = compose(["method=dmd2", "method.lr=5e-2", "method.warmup_iterations=0", "method.weight_decay=0"])
    dmd2 = METHODS.get("dmd2")(teacher, cfg.method, CPU, cfg)
    start = teacher.distance(dmd2.generator)
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": KIMG, "batch": 256, "checkpoint_every_kimg": 0, "eval_every_kimg": 0})
    Trainer(trainer_cfg, dmd2, tmp_path, CPU).train()
    end = teacher.distance(dmd2.generator)
    assert start > 1.0
    assert end < GAUSSIAN_TOLERANCE, f"DMD2 left the affine generator at Frechet distance {end:.4f} (start {start:.3f})"
