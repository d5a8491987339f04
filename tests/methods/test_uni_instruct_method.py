"""Uni-Instruct as a plugin (methods/sid/uni_instruct.py): SiDA's phases with the last one's SiD loss
replaced by the expanded f-divergence's gradient, the ratio from the discriminator's logits of the
same fake-score call, one iteration's network calls counted by hand, the phase kept through a
checkpoint, settings refused in one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sidbench.config import compose
from sidbench.data.real import open_real_images
from sidbench.methods import METHODS
from sidbench.methods.f_divergence import DIVERGENCES
from sidbench.methods.sid import uni_instruct_loss
from sidbench.methods.sid.settings import UNI_INSTRUCT_DIVERGENCES
from sidbench.teachers.load import load_teacher
from sidbench.trainer.compute import ComputeCounter
from sidbench.trainer.context import StepContext

CPU = torch.device("cpu")


def make(teacher_path: Path, method: str = "uni_instruct", *overrides: str, batch: int = 4):
    cfg = compose([f"method={method}", "dataset=digits", f"dataset.teacher.path={teacher_path}", "method.dropout=0.0",
                   "method.augment_p=0", "method.lr=1e-4", *overrides])
    teacher = load_teacher(cfg.dataset.teacher, CPU)
    m = METHODS.get(method)(teacher, cfg.method, CPU, cfg)
    real = open_real_images(cfg.dataset, teacher.shape, teacher.label_dim)
    counter = ComputeCounter()
    counter.attach({**m.frozen_networks(), **m.networks()})
    ctx = StepContext(m.networks(), m.optimizers(), CPU, batch=batch, counter=counter, real_data=real)
    return m, ctx, counter


def run(m, ctx, iterations: int, start: int = 0) -> list[dict]:  # noqa: ANN001
    logs = []
    for it in range(start, start + iterations):
        ctx.iteration = it
        logs.append(m.train_step(ctx))
    return logs


def test_the_divergence_choices_are_the_tables_and_the_phases_sidas() -> None:
    assert set(UNI_INSTRUCT_DIVERGENCES) == set(DIVERGENCES)
    assert issubclass(METHODS.get("uni_instruct").settings, METHODS.get("sida").settings)
    cfg = compose(["method=uni_instruct", "~preset"])
    assert (cfg.method.divergence, cfg.method.generator_start_kimg, cfg.method.adversarial_start_kimg) == ("forward_kl", 100, 200)


def test_stages_are_sidas_renamed_and_the_phase_survives_a_checkpoint(tiny_teacher: Path) -> None:
    ui, _, _ = make(tiny_teacher, "uni_instruct", "method.generator_start_kimg=3", "method.adversarial_start_kimg=7")
    assert [(s.name, s.start) for s in ui.stages()] == [("fake-score warm-up", 0.0), ("sid", 3.0), ("uni-instruct", 7.0)]
    ui.enter_stage(2, ui.stages()[2])
    again, _, _ = make(tiny_teacher)
    again.load_state_dict(ui.state_dict())
    assert again.phase == 2


def test_the_warm_start_is_sida_and_the_last_phase_is_not(tiny_teacher: Path) -> None:
    for phase, same in ((1, True), (2, False)):
        sida, ctx_s, _ = make(tiny_teacher, "sida")
        ui, ctx_u, _ = make(tiny_teacher, "uni_instruct")
        for m in (sida, ui):
            m.enter_stage(1, m.stages()[1])
            m.phase = phase
        run(sida, ctx_s, 2), run(ui, ctx_u, 2)  # the first iteration trains the fake score away from the teacher
        equal = all(torch.equal(a, b) for a, b in zip(sida.generator.parameters(), ui.generator.parameters()))
        assert equal == same, phase


def test_the_last_phase_is_the_divergence_loss_on_the_discriminators_ratio(tiny_teacher: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ui, ctx, _ = make(tiny_teacher, "uni_instruct", "method.divergence=jensen_shannon", "method.ratio_gradient=false")
    ui.phase = 2
    seen = {}
    real = uni_instruct_loss.generator_loss

    def spy(x_g, y_real, y_fake, ratio, sigma, name, ratio_gradient=True, wf=None):  # noqa: ANN001, ANN202
        seen.update(ratio=ratio, sigma=sigma, name=name, ratio_gradient=ratio_gradient)
        return real(x_g, y_real, y_fake, ratio, sigma, name, ratio_gradient, wf)

    monkeypatch.setattr("sidbench.methods.sid.uni_instruct.generator_loss", spy)
    logs = run(ui, ctx, 1)[0]
    assert seen["name"] == "jensen_shannon" and seen["ratio_gradient"] is False
    assert seen["ratio"].shape == (4, 1, 1, 1) and seen["sigma"].shape == (4, 1, 1, 1)
    assert torch.all(seen["ratio"] > 0) and not seen["ratio"].requires_grad
    assert 0.002 <= float(seen["sigma"].min()) and float(seen["sigma"].max()) < 25  # SiD's t_max = 800 law
    assert {"generator", "adversarial", "fake_score", "discriminator"} <= set(logs)
    assert "ratio" in ctx.take_logs()


def test_one_iteration_costs_what_a_hand_count_says(tiny_teacher: Path) -> None:
    ui, ctx, counter = make(tiny_teacher)
    ui.phase = 2
    with counter.iteration():
        ui.train_step(ctx)
    assert counter.calls == [
        ("generator", 4, False, False),   # x_g for the fake score, eval mode, no graph: 1
        ("fake_score", 8, True, True),    # generated and real in one call, trained: 1 + 2
        ("generator", 4, True, True),     # x_g with a graph: 1 + 2
        ("teacher", 4, False, True),      # y_real, gradient to its input: 1 + 1
        ("fake_score", 4, False, True),   # y_fake and the ratio's logits in one call: 1 + 1
    ]
    assert counter.take().passes == 4 * 1 + 8 * 3 + 4 * 3 + 4 * 2 + 4 * 2


def test_bad_settings_are_refused_in_one_line(refused) -> None:  # noqa: ANN001 - the fixture
    assert "method.divergence=tv: must be one of" in refused("method=uni_instruct", "method.divergence=tv")
    assert "method=uni_instruct trains on real images" in refused("method=uni_instruct", "dataset=cifar10")
    assert "is before method.generator_start_kimg" in refused("method=uni_instruct", "method.generator_start_kimg=2",
                                                              "method.adversarial_start_kimg=1")


@pytest.mark.parametrize("divergence", UNI_INSTRUCT_DIVERGENCES)
def test_every_divergence_runs_a_finite_iteration(tiny_teacher: Path, divergence: str) -> None:
    ui, ctx, _ = make(tiny_teacher, "uni_instruct", f"method.divergence={divergence}")
    ui.phase = 2
    logs = run(ui, ctx, 2)[-1]
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())
