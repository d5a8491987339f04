"""ECT and sCD as plugins (docs/ect-scd.md): one iteration's passes counted by hand against the
trainer's counter (the JVP is 2 passes an image, docs/compute.md), the stages ECT enters and keeps
across a resume, its refusal of a dataset without images, the samplers both recipes name, and sCD's
networks (the student, the log-variance head) trained together."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.config import compose
from sidbench.data.real import open_real_images
from sidbench.diffusion import sample
from sidbench.methods import METHODS
from sidbench.methods.baselines.ect.loss import stage_count, t_to_r
from sidbench.teachers.load import load_teacher
from sidbench.trainer.compute import JVP, ComputeCounter
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import Trainer

CPU = torch.device("cpu")


def make(teacher_path: Path, method: str, batch: int = 4, **settings: object):
    cfg = compose([f"method={method}", "dataset=digits", f"dataset.teacher.path={teacher_path}",
                   *[f"method.{k}={v}" for k, v in settings.items()]])
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    m = METHODS.get(method)(teacher, cfg.method, CPU, cfg)
    real = open_real_images(cfg.dataset, teacher.shape, teacher.label_dim)
    counter = ComputeCounter()
    counter.attach({**m.frozen_networks(), **m.networks()})
    ctx = StepContext(m.networks(), m.optimizers(), CPU, batch=batch, counter=counter, real_data=real)
    return m, ctx, counter, cfg, real


def forward_flops(net: torch.nn.Module, n: int = 4) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        net(torch.randn(n, 1, 8, 8), torch.ones(n), None)
    return float(mode.get_total_flops())


# -- counted compute --------------------------------------------------------------------------------
def trainer_step(m, cfg, real, tmp_path: Path) -> ComputeCounter:  # noqa: ANN001
    """One iteration as the trainer runs it (its StepContext, its counter attached to the method's
    networks); returns the trainer's counter."""
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 1, "batch": 4, "batch_gpu": None})
    trainer = Trainer(trainer_cfg, m, tmp_path, CPU, real_data=real)
    trainer.step()
    return trainer.counter


def test_ect_passes_by_hand(tiny_teacher: Path, tmp_path: Path) -> None:
    ect, _, _, cfg, real = make(tiny_teacher, "ect", dropout=0.0)
    ect.enter_stage(2, ect.stages()[2])  # from stage 2 on r > 0 for every t: the target call always runs
    counter = trainer_step(ect, cfg, real, tmp_path)
    # By hand, per image: the online call forward and backward to its weights (1 + 2), the target
    # call without a graph (1). No teacher call.
    assert counter.calls == [("generator", 4, True, True), ("generator", 4, True, False)]
    cost = counter.take()
    assert cost.passes == (3 + 1) * 4 and cost.teacher_passes == 0
    # FLOPs: a backward to the weights and the input is 2 forwards, so 4 forwards in all
    assert cost.flops == pytest.approx(4 * forward_flops(ect.generator), rel=0.05)


def test_scd_passes_by_hand(tiny_teacher: Path, tmp_path: Path) -> None:
    scd, _, _, cfg, real = make(tiny_teacher, "scd")
    counter = trainer_step(scd, cfg, real, tmp_path)
    # By hand, per image: the teacher's velocity (1, no graph); the student's F forward and
    # backward (1 + 2); the log-variance head forward and backward (1 + 2: a network call is a pass
    # whatever its size); the student's JVP (2: primal and tangent).
    assert counter.calls == [("teacher", 4, False, False), ("generator", 4, True, True), ("logvar", 4, True, True),
                             ("generator", 4, True, JVP)]
    cost = counter.take()
    assert cost.passes == (1 + 3 + 3 + 2) * 4 and cost.teacher_passes == 4
    # FLOPs: FlopCounterMode counts the JVP as about 3 forwards (it also multiplies by the weights'
    # zero tangents), so 1 + 3 + 3 forwards of the UNet; the head's are negligible
    assert cost.flops == pytest.approx(7 * forward_flops(scd.generator), rel=0.1)


# -- ECT's stages -----------------------------------------------------------------------------------
def test_ect_stages_are_contract_stages_and_resume_keeps_them(tiny_teacher: Path, tmp_path: Path) -> None:
    ect, _, _, cfg, real = make(tiny_teacher, "ect", stage_kimg=0.008)  # batch 4: a stage every 2 iterations
    stages = ect.stages()
    assert len(stages) == stage_count(2.0) == 24
    assert [(s.start, s.unit, s.reset_optimizers, s.reset_ema) for s in stages[:3]] == [
        (0.0, "kimg", (), False), (0.008, "kimg", (), False), (0.016, "kimg", (), False)]
    seen: list[int] = []
    step = ect.train_step
    ect.train_step = lambda ctx: (seen.append(ect.stage), step(ctx))[1]
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 0.024, "batch": 4, "checkpoint_every_kimg": 0,
                                                "eval_every_kimg": 0, "eval_at_kimg": [], "count_flops": False})
    progress = Trainer(trainer_cfg, ect, tmp_path, CPU, real_data=real).train()
    assert progress.iteration == 6 and progress.stage == 2 and seen == [0, 0, 1, 1, 2, 2]

    fresh, _, _, _, _ = make(tiny_teacher, "ect", stage_kimg=0.008)
    seen2: list[int] = []
    step2 = fresh.train_step
    fresh.train_step = lambda ctx: (seen2.append(fresh.stage), step2(ctx))[1]
    again = Trainer(OmegaConf.merge(trainer_cfg, {"kimg": 0.040}), fresh, tmp_path, CPU, real_data=real)
    assert again.resume() and fresh.stage == 2
    again.train()
    assert seen2 == [3, 3, 4, 4]  # 24 images seen: stage 3 starts at the first resumed iteration


def test_ect_r_uses_the_current_stage(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ect, ctx, _, _, _ = make(tiny_teacher, "ect")
    import sidbench.methods.baselines.ect.method as module

    stages: list[int] = []
    monkeypatch.setattr(module, "t_to_r", lambda t, stage, **kw: (stages.append(stage), t_to_r(t, stage, **kw))[1])
    ect.train_step(ctx)
    ect.enter_stage(5, ect.stages()[5])
    ect.train_step(ctx)
    assert stages == [0, 5] and ect.state_dict() == {"stage": 5}


def test_ect_is_refused_on_a_dataset_without_images(tiny_teacher: Path, refused) -> None:  # noqa: ANN001 - the fixture
    line = refused("method=ect", "dataset=digits", f"dataset.teacher.path={tiny_teacher}", "dataset.images.builtin=null")
    assert "method=ect trains on real images and dataset digits has none" in line
    line = refused("method=ect", "dataset=cifar10")
    assert "method=ect trains on real images and dataset cifar10 has none" in line


def test_scd_on_teacher_samples_needs_no_images(tiny_teacher: Path) -> None:
    cfg = compose(["method=scd", "dataset=digits", "method.data=teacher"])
    assert not METHODS.get("scd").uses_real_data(cfg.method)
    assert METHODS.get("scd").uses_real_data(compose(["method=scd", "dataset=digits"]).method)


# -- sampling ---------------------------------------------------------------------------------------
def test_scd_recipe_samples_the_denoiser_itself(tiny_teacher: Path) -> None:
    scd, _, _, _, _ = make(tiny_teacher, "scd")
    net = scd.generator.eval()
    z = torch.randn(3, 1, 8, 8)
    recipe = scd.sampling()
    assert recipe == {"sampler": "consistency", "sigmas": [80.0], "sigma_min": 0.0, "nfe": 1}
    with torch.no_grad():
        torch.testing.assert_close(sample(net, z, None, recipe), net(80 * z, torch.full((3,), 80.0), None),
                                   rtol=1e-5, atol=1e-5)


def test_ect_recipe(tiny_teacher: Path) -> None:
    ect, _, _, _, _ = make(tiny_teacher, "ect", sampling_sigmas="[80.0,0.821]", dropout=0.3)
    assert ect.sampling() == {"sampler": "consistency", "sigmas": [80.0, 0.821], "sigma_min": 0.003, "nfe": 2}
    assert ect.frozen_networks() == {} and ect.plan_networks(ect.cfg, ect.teacher.constructor)["generator"]["dropout"] == 0.3


# -- sCD's update ----------------------------------------------------------------------------------
def test_scd_trains_student_and_head_together_and_ramps_the_tangent(tiny_teacher: Path) -> None:
    scd, ctx, _, _, _ = make(tiny_teacher, "scd", tangent_warmup_iterations=4, lr=1e-3)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in scd.networks().items()}
    teacher = [p.detach().clone() for p in scd.teacher.net.parameters()]
    ctx.iteration = 1
    logs = scd.train_step(ctx)
    assert torch.isfinite(torch.as_tensor(logs["scd"]))
    for k, net in scd.networks().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters())), k
    assert all(torch.equal(a, b) for a, b in zip(teacher, scd.teacher.net.parameters()))
    assert ctx.take_logs()["tangent_ratio"] == pytest.approx(2 / 4)  # FastGen counts iterations from 1


@pytest.mark.parametrize(("method", "override", "message"), [
    ("ect", {"q": 1.0}, "method.q=1.0: must be a number > 1"),
    ("ect", {"mapping": "linear"}, "method.mapping=linear: must be one of sigmoid, const"),
    ("ect", {"sampling_sigmas": "[80.0,0.001]"}, "must be a decreasing list"),
    ("scd", {"tangent_norm": "l1"}, "method.tangent_norm=l1: must be one of rms, l2"),
    ("scd", {"sigma_min": 100.0}, "must be below method.sigma_max"),
])
def test_bad_settings_are_one_line(tiny_teacher: Path, refused, method: str, override: dict, message: str) -> None:  # noqa: ANN001
    line = refused(f"method={method}", "dataset=digits", f"dataset.teacher.path={tiny_teacher}",
                   *[f"method.{k}={v}" for k, v in override.items()])
    assert message in line, line
