"""How one SiDA iteration runs: the phases, real data, one fake-score call for real and fake with
the same noise, the mixed generator loss, SiD²A's start, and a whole run through the command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sidbench.cli import main
from sidbench.config import ConfigError, compose
from sidbench.data.real import open_real_images
from sidbench.methods import METHODS
from sidbench.methods.sid.sida import micro_batch_warning
from sidbench.teachers.load import load_teacher
from sidbench.testing.tiny import make_tiny_teacher, tiny_overrides
from sidbench.trainer.context import StepContext

CPU = torch.device("cpu")


def make_sida(teacher_path: Path, batch: int = 4, **method: object):
    cfg = compose(["method=sida", "dataset=digits", f"dataset.teacher.path={teacher_path}", "method.dropout=0.0",
                   *[f"method.{k}={v}" for k, v in method.items()]])
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    sida = METHODS.get("sida")(teacher, cfg.method, CPU, cfg)
    real = open_real_images(cfg.dataset, teacher.shape, teacher.label_dim)
    ctx = StepContext(sida.networks(), sida.optimizers(), CPU, batch=batch, real_data=real)
    return sida, ctx, teacher


def snapshot(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def changed(before: list[torch.Tensor], net: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_phases_are_stages_at_the_configured_kimg(tiny_teacher: Path) -> None:
    sida, _, _ = make_sida(tiny_teacher, generator_start_kimg=3, adversarial_start_kimg=7)
    assert [(s.name, s.start, s.unit) for s in sida.stages()] == [
        ("fake-score warm-up", 0.0, "kimg"), ("sid", 3.0, "kimg"), ("sida", 7.0, "kimg")]
    assert sida.uses_real_data(sida.cfg) and sida.sampling() == {"sampler": "one_step", "sigmas": [2.5], "nfe": 1}
    sida.enter_stage(2, sida.stages()[2])
    assert sida.state_dict() == {"phase": 2}
    again, _, _ = make_sida(tiny_teacher)
    again.load_state_dict({"phase": 1})
    assert again.phase == 1


def test_before_generator_start_only_the_fake_score_trains(tiny_teacher: Path) -> None:
    sida, ctx, teacher = make_sida(tiny_teacher)
    g, f, t = snapshot(sida.generator), snapshot(sida.fake_score), snapshot(teacher.net)
    logs = sida.train_step(ctx)
    assert changed(f, sida.fake_score) and not changed(g, sida.generator) and not changed(t, teacher.net)
    assert "generator" not in logs and {"fake_score", "discriminator"} <= set(logs)
    sida.enter_stage(1, sida.stages()[1])
    g = snapshot(sida.generator)
    logs = sida.train_step(ctx)
    assert changed(g, sida.generator) and "generator" in logs and "adversarial" not in logs
    sida.enter_stage(2, sida.stages()[2])
    assert "adversarial" in sida.train_step(ctx)


def test_real_and_fake_share_one_call_with_the_same_sigma_and_noise(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sida, ctx, _ = make_sida(tiny_teacher, augment_p=0)
    x_r = torch.rand(4, 1, 8, 8) * 2 - 1
    monkeypatch.setattr(ctx, "real", lambda n: (x_r[:n], None))
    generated: list[torch.Tensor] = []
    sida.generator.register_forward_hook(lambda m, a, out: generated.append(out.detach().clone()))
    calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
    sida.fake_score.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0].detach().clone(), args[1].detach().clone(),
                                              kwargs.get("return_bottleneck", False),
                                              kwargs.get("decode_first"))), with_kwargs=True)
    decoded: list[int] = []
    for block in sida.fake_score.model.dec.values():
        block.register_forward_hook(lambda m, a, out: decoded.append(out.shape[0]))
    sida._fake_score_loss(ctx, 4)
    (x, sigma, bottleneck, decode_first), = calls
    assert x.shape[0] == 8 and bottleneck and torch.equal(sigma[:4], sigma[4:])
    # the real half needs only the encoder's logits: the decoder sees the generated half alone
    assert decode_first == 4 and decoded and set(decoded) == {4}
    torch.testing.assert_close(x[:4] - generated[0], x[4:] - x_r)  # the same noise on both halves


def test_generator_loss_mixes_sid_and_adversarial_terms_as_configured(tiny_teacher: Path) -> None:
    sida, ctx, _ = make_sida(tiny_teacher, adversarial_mix=0.25, adversarial_scale=0.02)
    sida.phase = 1
    torch.manual_seed(3)
    sid_only, logs1 = sida._generator_loss(ctx, 4)
    sida.phase = 2
    torch.manual_seed(3)  # the same draws: the same x_g, sigma, noise and real labels
    mixed, logs2 = sida._generator_loss(ctx, 4)
    torch.testing.assert_close(logs1["generator"], logs2["generator"])
    assert logs2["adversarial"] > 0
    # 100 * SiD's sum before the adversarial phase; then 0.75 of it plus 0.25 * 0.02 * sum a_i
    torch.testing.assert_close(sid_only, 100 * logs1["generator"] * 4)
    torch.testing.assert_close(mixed, 0.75 * sid_only + 0.25 * 0.02 * logs2["adversarial"] * 4)


def test_the_fake_score_loss_scaling_applies_to_its_own_term_only(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As published (`--ls` and `--lsd`): ls * L_fs + lsd * L_D, not ls * (L_fs + lsd * L_D)."""
    sida, ctx, _ = make_sida(tiny_teacher, loss_scale_fake_score=2.0, discriminator_weight=0.5)
    torch.manual_seed(5)
    total, logs = sida._fake_score_loss(ctx, 4)
    torch.testing.assert_close(total, 4 * (2.0 * logs["fake_score"] + 0.5 * logs["discriminator"]))
    seen: dict[str, object] = {}
    update = ctx.update
    monkeypatch.setattr(ctx, "update", lambda names, fn, **kw: seen.setdefault(names, kw) and update(names, fn, **kw))
    sida.train_step(ctx)
    assert seen["fake_score"].get("loss_scale", 1.0) == 1.0  # the scalings are inside the loss


def test_the_fake_scores_gradients_are_clipped_per_value(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sida, ctx, _ = make_sida(tiny_teacher, clip_grad_value_fake_score=0.5)
    seen: dict[str, object] = {}
    update = ctx.update
    monkeypatch.setattr(ctx, "update", lambda names, fn, **kw: seen.setdefault(names, kw) and update(names, fn, **kw))
    sida.enter_stage(1, sida.stages()[1])
    sida.train_step(ctx)
    assert seen["fake_score"]["clip_grad_value"] == 0.5 and seen["generator"].get("clip_grad_value") is None


def test_sid2a_starts_the_generator_from_a_trained_one(tiny_teacher: Path, tmp_path: Path) -> None:
    trained, _, _ = make_sida(tiny_teacher)
    with torch.no_grad():
        for p in trained.generator.parameters():
            p.add_(0.01)
    from sidbench.teachers.load import save_native_teacher

    path = save_native_teacher(trained.generator, trained.teacher.constructor, tmp_path / "sid-generator.safetensors")
    sid2a, _, teacher = make_sida(tiny_teacher, generator_init=path)
    assert all(torch.equal(a, b) for a, b in zip(sid2a.generator.parameters(), trained.generator.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(sid2a.fake_score.parameters(), teacher.net.parameters()))
    other = make_tiny_teacher(tmp_path / "other.safetensors", label_dim=10)
    with pytest.raises(ConfigError, match="another architecture"):
        make_sida(tiny_teacher, generator_init=other)


def test_adversarial_before_generator_start_is_refused_before_the_teacher_loads(tiny_teacher: Path, refused,  # noqa: ANN001
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import sidbench.run

    monkeypatch.setattr(sidbench.run, "load_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    line = refused("method=sida", f"dataset.teacher.path={tiny_teacher}", "method.generator_start_kimg=2",
                   "method.adversarial_start_kimg=1")
    assert line.startswith("method.adversarial_start_kimg=1 is before method.generator_start_kimg=2")


def test_micro_batch_warning_names_both_sizes_only_when_they_differ() -> None:
    assert micro_batch_warning([32, 32], 32) is None and micro_batch_warning([16], None) is None
    note = micro_batch_warning([16, 16], 32)
    assert note and "16 images" in note and "published runs' 32" in note and "\n" not in note
    assert "32/8 images" in micro_batch_warning([32, 32, 8], 32)  # an uneven last micro-batch
    assert micro_batch_warning([64], 32)  # a larger micro-batch averages over more samples: also another signal


@pytest.mark.parametrize("batch_gpu,rank,warned", [(2, 0, True), (4, 0, False), (2, 1, False)])
def test_a_run_whose_micro_batch_differs_from_the_published_one_warns_once(
        tiny_teacher: Path, capsys: pytest.CaptureFixture[str], batch_gpu: int, rank: int, warned: bool) -> None:
    sida, _, _ = make_sida(tiny_teacher, published_batch_gpu=4)
    real = open_real_images(sida.full_cfg.dataset, sida.teacher.shape, sida.teacher.label_dim)
    ctx = StepContext(sida.networks(), sida.optimizers(), CPU, batch=4, batch_gpu=batch_gpu, real_data=real, rank=rank)
    capsys.readouterr()
    sida.prepare(ctx)  # before the first iteration of a fresh or resumed run
    sida.train_step(ctx)
    sida.train_step(ctx)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    if warned:
        assert len(lines) == 1 and lines[0].startswith("warning:") and "2 images" in lines[0] and "published runs' 4" in lines[0]
    else:
        assert lines == []


@pytest.mark.slow
def test_a_sida_run_goes_through_every_phase(tiny_teacher: Path, run_env: Path) -> None:
    overrides = tiny_overrides(tiny_teacher, **{"method.generator_start_kimg": 0.016, "method.adversarial_start_kimg": 0.032})
    assert main(["run", "method=sida", "run_name=sida", *overrides]) == 0
    lines = [json.loads(line) for line in (run_env / "runs" / "digits" / "sida" / "metrics.jsonl").read_text().splitlines()]
    phases = [line["train/phase"] for line in lines if "train/phase" in line]
    assert phases[0] == 0 and phases[-1] == 2 and sorted(phases) == phases
    assert any("loss/adversarial" in line for line in lines) and "eval/fd_pixel" in lines[-1]
