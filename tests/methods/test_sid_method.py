"""How one SiD iteration runs: network modes, update order, fresh noise, optimiser settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher
from sidbench.trainer.context import StepContext


def make_sid(teacher_path: Path, **method: object):
    cfg = compose(["dataset=digits", f"dataset.teacher.path={teacher_path}", "method.dropout=0.1",
                   "method.augment_p=0.5", *[f"method.{k}={v}" for k, v in method.items()]])
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    sid = METHODS.get("sid")(teacher, cfg.method, torch.device("cpu"), cfg)
    ctx = StepContext(sid.networks(), sid.optimizers(), torch.device("cpu"), batch=4)
    return sid, ctx, teacher


def record_calls(nets: dict[str, torch.nn.Module]) -> list[tuple[str, bool, bool, torch.Tensor]]:
    """(network, training mode, grad enabled, input) at every call."""
    calls: list[tuple[str, bool, bool, torch.Tensor]] = []
    for name, net in nets.items():
        net.register_forward_pre_hook(lambda m, args, name=name: calls.append((name, m.training, torch.is_grad_enabled(), args[0].detach().clone())))
    return calls


def test_modes_and_order_of_one_iteration(tiny_teacher: Path) -> None:
    sid, ctx, teacher = make_sid(tiny_teacher)
    calls = record_calls({"generator": sid.generator, "fake_score": sid.fake_score, "teacher": teacher.net})
    sid.train_step(ctx)
    seen = [(name, training, grad) for name, training, grad, _ in calls]
    assert seen == [
        ("generator", False, False),  # samples for the fake-score update: eval mode, no graph
        ("fake_score", True, True),   # the fake score's own update: train mode (dropout on)
        ("generator", True, True),    # the generator update: train mode
        ("teacher", False, True),     # teacher always in eval mode; gradient flows to its input
        ("fake_score", False, True),  # fake score in eval mode inside the generator loss
    ]
    # each update draws fresh noise
    assert not torch.allclose(calls[0][3], calls[2][3])


def test_augmentation_reaches_only_the_fake_score_update(tiny_teacher: Path) -> None:
    sid, ctx, teacher = make_sid(tiny_teacher)
    augment: list[torch.Tensor | None] = []
    for net in (sid.fake_score, teacher.net):
        net.register_forward_pre_hook(lambda m, args, kwargs: augment.append(kwargs.get("augment_labels")), with_kwargs=True)
    sid.train_step(ctx)
    fake_update, teacher_call, fake_in_g = augment
    assert fake_update is not None and fake_update.shape == (4, 9)
    assert set(fake_update[:, 0].tolist()) <= {0.0, 1.0}  # the x-flip label of each sample
    assert teacher_call is None and fake_in_g is None  # zero augmentation labels in the generator update


def test_only_the_updated_network_changes(tiny_teacher: Path) -> None:
    sid, ctx, teacher = make_sid(tiny_teacher)
    before = {k: [p.clone() for p in n.parameters()] for k, n in {**sid.networks(), "teacher": teacher.net}.items()}
    ctx.update("fake_score", lambda n: sid._fake_score_loss(ctx, n))
    changed = {k: any(not torch.equal(a, b) for a, b in zip(before[k], n.parameters()))
               for k, n in {**sid.networks(), "teacher": teacher.net}.items()}
    assert changed == {"fake_score": True, "generator": False, "teacher": False}
    assert all(p.grad is None for p in sid.generator.parameters())


def test_optimiser_settings_follow_config(tiny_teacher: Path) -> None:
    sid, _, _ = make_sid(tiny_teacher, lr=3e-5, betas_generator="[0.9,0.999]", eps=1e-6)
    g, f = sid.optimizers()["generator"].defaults, sid.optimizers()["fake_score"].defaults
    assert (g["lr"], g["betas"], g["eps"]) == (3e-5, (0.9, 0.999), 1e-6)
    assert (f["lr"], f["betas"], f["eps"]) == (3e-5, (0.0, 0.999), 1e-6)
    assert isinstance(sid.optimizers()["generator"], torch.optim.Adam)


def test_dropout_reaches_generator_and_fake_score(tiny_teacher: Path) -> None:
    sid, _, teacher = make_sid(tiny_teacher, dropout=0.07)
    def rates(net: torch.nn.Module) -> set[float]:
        # the UNet blocks hold their dropout rate as a float attribute (functional dropout)
        return {m.dropout for m in net.modules() if isinstance(getattr(m, "dropout", None), float)}

    assert rates(sid.generator) == rates(sid.fake_score) == {0.07}
    assert rates(teacher.net) == {0.0}


def test_generator_and_fake_score_start_as_teacher_copies(tiny_teacher: Path) -> None:
    sid, _, teacher = make_sid(tiny_teacher)
    t = teacher.net.state_dict()
    for net in (sid.generator, sid.fake_score):
        assert all(torch.equal(v, t[k]) for k, v in net.state_dict().items())
        assert net is not teacher.net


def test_counted_passes_match_a_hand_count_of_sids_calls(tiny_teacher: Path) -> None:
    from sidbench.trainer.compute import ComputeCounter

    sid, _, teacher = make_sid(tiny_teacher)
    counter = ComputeCounter()
    counter.attach({"teacher": teacher.net, **sid.networks()})
    ctx = StepContext(sid.networks(), sid.optimizers(), torch.device("cpu"), batch=4, counter=counter)
    with counter.iteration():
        sid.train_step(ctx)
    # By hand, per generated image (forward 1; backward 2 to the weights, 1 only to the input):
    #   fake-score update: G forward, no graph (1) + fake score forward and backward (1 + 2)
    #   generator update:  G forward and backward (1 + 2) + teacher forward, backward to its
    #                      input (1 + 1) + fake score forward, backward to its input (1 + 1)
    assert counter.calls == [("generator", 4, False, False), ("fake_score", 4, True, True),
                             ("generator", 4, True, True), ("teacher", 4, False, True), ("fake_score", 4, False, True)]
    assert counter.cost.passes == (1 + 3 + 3 + 2 + 2) * 4 and counter.cost.teacher_passes == 2 * 4
    assert counter.cost.flops > 0


def test_fake_score_loss_drops_samples_that_hold_a_nan(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As published: a sample whose x_g or denoised output holds a NaN leaves the sum; the mean
    is still over the whole micro-batch (the context divides by it)."""
    import sidbench.methods.sid.method as sid_module

    sid, ctx, _ = make_sid(tiny_teacher, augment_p=0)
    per_element: list[torch.Tensor] = []
    pure = sid_module.fake_score_loss
    monkeypatch.setattr(sid_module, "fake_score_loss", lambda *a: per_element.append(pure(*a)) or per_element[-1])
    torch.manual_seed(0)
    clean, _ = sid._fake_score_loss(ctx, 4)
    assert ctx.take_logs()["dropped_fake_score"] == 0
    handle = sid.generator.register_forward_hook(lambda m, a, out: out.index_fill(0, torch.tensor([1]), float("nan")))
    torch.manual_seed(0)  # the same draws: the other samples see exactly what they saw before
    poisoned, items = sid._fake_score_loss(ctx, 4)
    handle.remove()
    per_sample = per_element[0].flatten(1).sum(1)
    torch.testing.assert_close(clean, per_sample.sum())
    torch.testing.assert_close(poisoned, per_sample.sum() - per_sample[1])
    assert ctx.take_logs()["dropped_fake_score"] == 1 and torch.isfinite(items["fake_score"])


@pytest.mark.parametrize("resample", ["sym6", "bilinear"])
def test_the_augment_resampler_is_the_configured_one(tiny_teacher: Path, resample: str) -> None:
    sid, _, _ = make_sid(tiny_teacher, augment_resample=resample)
    assert sid.augment.resample == resample and sid.augment.p == 0.5
