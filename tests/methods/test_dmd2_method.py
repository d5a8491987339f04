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
from sidbench.testing.tiny import make_tiny_teacher
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
    real = open_real_images(cfg.dataset, teacher.shape, teacher.label_dim) if dmd2.uses_real_data(cfg.method) else None
    counter = ComputeCounter()
    counter.attach({**dmd2.frozen_networks(), **dmd2.networks()})
    ctx = StepContext(dmd2.networks(), dmd2.optimizers(), CPU, batch=batch, counter=counter, real_data=real)
    return dmd2, ctx, counter, cfg


def test_generator_and_critic_iterations_cost_what_a_hand_count_says(tiny_teacher: Path) -> None:
    dmd2, ctx, counter, _ = make(tiny_teacher)
    assert not dmd2.uses_real_data(dmd2.cfg) and set(dmd2.networks()) == {"generator", "fake_score"}
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
    assert dmd2.uses_real_data(dmd2.cfg) and set(dmd2.networks()) == {"generator", "fake_score", "gan_head"}
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
    # warm-up 500 / 7 iterations: diffusers' 500-step warm-up stepped 7 times an iteration by
    # accelerate on the authors' 7 GPUs (methods/baselines/dmd/settings.py)
    assert (m.lr_generator, m.lr_fake_score, list(m.betas_generator), list(m.betas_fake_score), m.weight_decay,
            m.warmup_iterations, m.clip_grad_norm, m.ttur) == (2e-6, 2e-6, [0.9, 0.999], [0.9, 0.999], 0.01, 500 / 7, 10.0, 5)
    assert (m.sigma_init, m.dropout, m.grid_points, m.dm_index_min, m.dm_index_max) == (80.0, 0.0, 1000, 20, 980)
    assert (m.gan.enabled, m.gan.generator_weight, m.gan.discriminator_weight) == (False, 3e-3, 1e-2)
    assert (t.batch, t.batch_gpu, t.precision, t.ema_halflife_kimg) == (280, 40, "bf16", 0)


@pytest.mark.parametrize("method", ["dmd2", "dmd"])
def test_students_are_planned_and_saved_with_dropout_zero_whatever_the_teacher(method: str) -> None:
    cfg = compose([f"method={method}", "dataset=imagenet64"])
    teacher = dict(cfg.dataset.teacher.constructor)
    assert teacher["dropout"] == 0.1  # EDM's ImageNet 64 teacher
    plan = METHODS.get(method).plan_networks(cfg.method, teacher)
    assert (plan["teacher"]["dropout"], plan["generator"]["dropout"], plan["fake_score"]["dropout"]) == (0.1, 0.0, 0.0)
    assert {k: v for k, v in plan["generator"].items() if k != "dropout"} == {k: v for k, v in teacher.items() if k != "dropout"}
    kept = compose([f"method={method}", "dataset=imagenet64", "method.dropout=null"])
    assert METHODS.get(method).plan_networks(kept.method, teacher)["generator"]["dropout"] == 0.1


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no optimiser steps here
def test_warm_up_follows_the_authors_seven_gpu_schedule() -> None:
    # the authors' LR at iteration t: lr * min(7 t / 500, 1), by hand
    cfg = compose(["method=dmd2", "dataset=imagenet64"])
    teacher = GaussianTeacher(*random_gaussian(4))
    dmd2 = METHODS.get("dmd2")(teacher, cfg.method, CPU, cfg)
    sched = dmd2.schedulers()["generator"]
    lrs = []
    for _ in range(80):
        lrs.append(sched.optimizer.param_groups[0]["lr"])
        sched.step()
    for t in (0, 1, 35, 71, 72, 79):
        assert lrs[t] == pytest.approx(2e-6 * min(7 * t / 500, 1.0), rel=1e-12, abs=0)
    assert lrs[71] < 2e-6 and lrs[72] == 2e-6


@pytest.mark.parametrize("dropout", [None, "null"])
def test_dm_gradient_is_exactly_zero_at_initialisation_even_with_a_dropout_teacher(tmp_path: Path, dropout: str | None) -> None:
    """The fake score starts as the teacher: with the published dropout 0 the two scores agree
    bit for bit and the generator gets exactly no gradient; keeping the teacher's dropout 0.1
    (method.dropout=null) runs the students' dropout in train mode and the gradient is not 0."""
    teacher = make_tiny_teacher(tmp_path / "dropout.safetensors", dropout=0.1)
    dmd2, ctx, _, _ = make(teacher, *([f"method.dropout={dropout}"] if dropout else []))
    ctx.iteration = 0  # a generator iteration
    logs = dmd2.train_step(ctx)
    grads = [p.grad for p in dmd2.generator.parameters()]
    assert all(g is not None for g in grads)
    if dropout is None:
        assert float(logs["dm"]) == 0.0
        assert all(float(g.abs().max()) == 0.0 for g in grads)
    else:
        assert float(logs["dm"]) > 0.0
        assert any(float(g.abs().max()) > 0.0 for g in grads)


def test_a_sample_with_non_finite_scores_leaves_the_dm_loss_and_is_counted(tiny_teacher: Path) -> None:
    """Sample 0's teacher output is NaN: it is dropped and counted, and G's gradient is, bit for bit,
    the one it gets when sample 0 has no DM gradient at all (its teacher output set to the fake
    score's); before, the NaN made the whole update's gradient zero."""

    def run(sample0: str) -> tuple[list[torch.Tensor], dict]:
        dmd2, ctx, _, _ = make(tiny_teacher)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # a fake score apart from the teacher, so that the DM gradient is not 0
            for p in dmd2.fake_score.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        real_net = dmd2.teacher.net

        def teacher(x, sigma, labels=None, **kw):  # noqa: ANN001, ANN003, ANN202
            out = real_net(x, sigma, labels, **kw)
            first = out[:1] * float("nan") if sample0 == "nan" else dmd2.fake_score(x, sigma, labels)[:1]
            return torch.cat([first, out[1:]])

        dmd2.teacher.net = teacher
        ctx.iteration = 0
        logs = dmd2.train_step(ctx)
        return [p.grad.clone() for p in dmd2.generator.parameters()], {**logs, **ctx.take_logs()}

    grads, logs = run("nan")
    reference, ref_logs = run("agreeing")
    assert float(logs["dropped_dm"]) == 1.0 and float(ref_logs["dropped_dm"]) == 0.0
    assert float(logs["dm"]) == float(ref_logs["dm"]) > 0.0
    assert any(float(g.abs().max()) > 0.0 for g in grads)
    assert all(torch.equal(g, r) for g, r in zip(grads, reference))


def test_bad_settings_are_refused_in_one_line(tiny_teacher: Path, refused) -> None:  # noqa: ANN001 - the fixture
    assert "method.ttur=0: must be an integer >= 1" in refused("method=dmd2", "method.ttur=0")
    assert "need 0 <= min <= max" in refused("method=dmd2", "method.dm_index_min=30", "method.dm_index_max=20")
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
