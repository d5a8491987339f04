"""f-distill as a plugin (methods/baselines/dmd/f_distill.py): reverse KL is DMD2 draw for draw, other
divergences weigh the DM gradient by the GAN head's ratio at the DM term's x_t, one iteration's
network calls counted by hand, the ratio normaliser's state kept through a checkpoint, settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.config import compose
from sidbench.data.real import open_real_images
from sidbench.methods import METHODS
from sidbench.methods.baselines.dmd.settings import F_DISTILL_DIVERGENCES
from sidbench.methods.f_divergence import DIVERGENCES
from sidbench.teachers.load import load_teacher
from sidbench.trainer.compute import ComputeCounter
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import Trainer

CPU = torch.device("cpu")


def make(teacher_path: Path, method: str, *overrides: str, batch: int = 4, seed: int = 0):
    cfg = compose([f"method={method}", "dataset=digits", f"dataset.teacher.path={teacher_path}",
                   "method.warmup_iterations=0", "method.lr=1e-4", *overrides])
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    torch.manual_seed(seed)  # the GAN head's initial weights
    m = METHODS.get(method)(teacher, cfg.method, CPU, cfg)
    real = open_real_images(cfg.dataset, teacher.shape, teacher.label_dim) if m.uses_real_data(cfg.method) else None
    counter = ComputeCounter()
    counter.attach({**m.frozen_networks(), **m.networks()})
    ctx = StepContext(m.networks(), m.optimizers(), CPU, batch=batch, counter=counter, real_data=real)
    return m, ctx, counter, cfg


def run(m, ctx, iterations: int) -> list[dict]:  # noqa: ANN001
    logs = []
    for it in range(iterations):
        ctx.iteration = it
        logs.append(m.train_step(ctx))
        for sched in m.schedulers().values():
            sched.step()
    return logs


def test_the_divergence_choices_are_the_tables() -> None:
    assert set(F_DISTILL_DIVERGENCES) <= set(DIVERGENCES)
    assert METHODS.get("f_distill").settings.__mro__[1] is METHODS.get("dmd2").settings


def test_reverse_kl_is_dmd2_with_its_gan_head_draw_for_draw(tiny_teacher: Path) -> None:
    dmd2, ctx_d, _, _ = make(tiny_teacher, "dmd2", "method.gan.enabled=true")
    fd, ctx_f, _, _ = make(tiny_teacher, "f_distill", "method.divergence=reverse_kl")
    logs_d, logs_f = run(dmd2, ctx_d, 6), run(fd, ctx_f, 6)  # two generator iterations (0 and 5)
    for name, net in dmd2.networks().items():
        moved = any(not torch.equal(a, b) for a, b in zip(net.parameters(), dmd2.teacher.net.parameters())) \
            if name != "gan_head" else True
        assert moved, name
        for a, b in zip(net.parameters(), fd.networks()[name].parameters()):
            assert torch.equal(a, b), name
    assert [float(x["dm"]) for x in logs_d if "dm" in x] == [float(x["dm"]) for x in logs_f if "dm" in x]


def test_another_divergence_weighs_the_dm_gradient(tiny_teacher: Path) -> None:
    dmd2, ctx_d, _, _ = make(tiny_teacher, "dmd2", "method.gan.enabled=true")
    fd, ctx_f, _, _ = make(tiny_teacher, "f_distill", "method.divergence=forward_kl")
    run(dmd2, ctx_d, 6), run(fd, ctx_f, 6)  # at iteration 0 the fake score is the teacher: no DM gradient yet
    assert not all(torch.equal(a, b) for a, b in zip(dmd2.generator.parameters(), fd.generator.parameters()))
    logs = ctx_f.take_logs()
    assert 0.1 <= float(logs["ratio"]) <= 20 and float(logs["weight_max"]) >= 1.0


def test_one_iteration_costs_what_a_hand_count_says(tiny_teacher: Path) -> None:
    fd, ctx, counter, _ = make(tiny_teacher, "f_distill")
    assert fd.uses_real_data(fd.cfg) and set(fd.networks()) == {"generator", "fake_score", "gan_head"}
    ctx.iteration = 0  # a generator iteration
    with counter.iteration():
        fd.train_step(ctx)
    assert counter.calls == [
        ("generator", 4, True, True),     # x = G(z) with a graph: forward 1 + backward 2
        ("teacher", 4, False, False),     # mu_real at the DM x_t, no graph: 1
        ("fake_score", 4, False, False),  # mu_fake and the bottleneck at the same x_t, no graph: 1
        ("gan_head", 4, False, False),    # the ratio's logits, no graph: 1
        ("fake_score", 4, False, True),   # DMD2's GAN term: frozen, gradient to x: 1 + 1
        ("gan_head", 4, False, True),     # 1 + 1
        ("fake_score", 12, True, True),   # critic: generated, real and fake-logits inputs in one call: 1 + 2
        ("gan_head", 8, True, True),      # the head on real and fake: 1 + 2
    ]
    assert counter.take().passes == 4 * (3 + 1 + 1 + 1 + 2 + 2) + 12 * 3 + 8 * 3
    ctx.iteration = 1  # critic only: x without a graph (1), the critic as above
    with counter.iteration():
        fd.train_step(ctx)
    assert counter.take().passes == 4 * 1 + 12 * 3 + 8 * 3


def test_the_ratio_normaliser_is_kept_through_a_checkpoint(tiny_teacher: Path, tmp_path: Path) -> None:
    fd, _, _, cfg = make(tiny_teacher, "f_distill", "method.ttur=1")
    real = open_real_images(cfg.dataset, fd.teacher.shape, fd.teacher.label_dim)
    tcfg = OmegaConf.merge(cfg.trainer, {"kimg": 0.016, "batch": 4, "checkpoint_every_kimg": 0, "eval_every_kimg": 0,
                                         "count_flops": False})
    trainer = Trainer(tcfg, fd, tmp_path / "a", CPU, real_data=real)
    trainer.train()
    means = fd.normaliser.means.clone()
    assert not torch.equal(means, torch.ones_like(means))  # the averages moved
    state = trainer.state_dict()
    again, _, _, _ = make(tiny_teacher, "f_distill", "method.ttur=1")
    Trainer(tcfg, again, tmp_path / "b", CPU, real_data=real).load_state_dict(state)
    assert torch.equal(again.normaliser.means, means)
    assert again.state_dict()["ratio_normaliser"]["ema_rate"] == cfg.method.ratio_ema


def test_bad_settings_are_refused_in_one_line(tiny_teacher: Path, refused) -> None:  # noqa: ANN001 - the fixture
    assert "method.divergence=chi_square: must be one of" in refused("method=f_distill", "method.divergence=chi_square")
    assert "set method.gan.enabled=true" in refused("method=f_distill", "method.gan.enabled=false")
    assert "must be below" in refused("method=f_distill", "method.ratio_min=5", "method.ratio_max=2")
    assert "method=f_distill trains on real images" in refused("method=f_distill", "dataset=cifar10")
    refused_rkl = compose(["method=f_distill", "method.divergence=reverse_kl", "method.gan.enabled=false"])
    assert not METHODS.get("f_distill").uses_real_data(refused_rkl.method)  # DMD2's TTUR-only run: data-free


@pytest.mark.parametrize("divergence", F_DISTILL_DIVERGENCES)
def test_every_divergence_runs_a_finite_iteration(tiny_teacher: Path, divergence: str) -> None:
    fd, ctx, _, _ = make(tiny_teacher, "f_distill", f"method.divergence={divergence}")
    logs = run(fd, ctx, 1)[0]
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())


@pytest.mark.slow
def test_two_processes_share_one_ratio_normaliser(tiny_teacher: Path, run_env: Path) -> None:
    """Under DDP (2 processes, gloo) the bin averages and the weights' mean are all-reduced in every
    generator update: the run finishes (the ranks' collectives pair up) and its checkpoint holds
    moved, finite averages. (One process with the same micro-batches normalises each micro-batch
    alone: docs/frontier.md#f-distill; no 1-vs-2-process comparison here.)"""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
    from test_ddp import common_overrides, launch

    launch([*common_overrides(tiny_teacher), "method=f_distill", "method.ttur=1", "method.lr=1e-4",
            "method.warmup_iterations=0", "trainer.count_flops=false"], run_env, nproc=2)
    (run,) = [p for p in (run_env / "runs" / "digits").iterdir()]
    state = torch.load(run / "checkpoint.pt", weights_only=True)["method"]["ratio_normaliser"]
    means = state["means"]
    assert torch.isfinite(means).all() and not torch.equal(means, torch.ones_like(means))
