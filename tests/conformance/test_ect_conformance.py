"""ECT's loss and sampler against the authors' code (locuslab/ect, arXiv 2406.14548;
fixtures/ect.json says what make_ect.py recorded, from which commit).

Each case runs sidbench's pure functions (methods/baselines/ect/loss.py: `sample_t`, `t_to_r`, `ect_loss`) on sidbench's
EDMPrecond with the fixture's weights, the reference's draws replayed (ln t, the shared noise) and
the random state the reference started from (dropout masks come from it), then takes the batch
mean and backpropagates as the reference's loop does. It compares t and r, the per-sample losses
and every parameter's gradient. Tolerance: rtol 1e-4 and an atol of 1e-6 of the largest gradient
(float32; the reference's ECMPrecond and sidbench's EDMPrecond compute the same network, to
float32 round-off: tests/fixtures/edm-parity.pt). There is no step context yet (the plugin comes
later): the reduction here is the reference's mean, which is what StepContext.update makes of a
summed loss.

"dropout" pins the shared mask: with the online call's random state restored before the target
call the losses match; without it (shared_dropout=False) they differ, which the test also checks,
so a target call that drew a mask of its own would fail.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from draws import Replay
from make_consistency import unpack

from sidbench import diffusion
from sidbench.methods.baselines.ect.loss import ECT_SIGMA_MIN, ect_loss, sample_t, t_to_r
from sidbench.teachers.networks import build_edm_network

FIXTURE = Path(__file__).parent / "fixtures" / "ect.pt"
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def network(fixture: dict, label_dim: int, dropout: float) -> torch.nn.Module:
    net = build_edm_network({"precond": "EDMPrecond", "label_dim": label_dim, "dropout": dropout, **fixture["network"]})
    net.load_state_dict(unpack(fixture["weights"]["cond" if label_dim else "uncond"]), strict=True)
    return net.train()


def run_case(fixture: dict, name: str, shared_dropout: bool = True) -> tuple[dict, torch.Tensor, dict]:
    case = fixture["cases"][name]
    s = case["settings"]
    net = network(fixture, s["label_dim"], s["dropout"])
    x = fixture["x"]
    labels = torch.nn.functional.one_hot(fixture["classes"], fixture["label_dim"]).float() if s["label_dim"] else None
    torch.set_rng_state(case["rng_state"])
    with Replay(case["draws"]) as replay:
        t = sample_t(len(x), s["P_mean"], s["P_std"])
        r = t_to_r(t, s["stage"], q=s["q"], k=s["k"], b=s["b"], mapping=s["adj"])
        noise = torch.randn_like(x)
        loss = ect_loss(net, x, t, r, noise, labels, c=s["c"], shared_dropout=shared_dropout)
    replay.assert_exhausted()
    loss.mean().backward()
    grads = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    return {"t": t, "r": r}, loss.detach(), grads


@pytest.mark.parametrize("name", ["stage0", "stage3_huber", "dropout", "data_target", "const_cond"])
def test_loss_and_gradients_match_the_reference(fixture: dict, name: str) -> None:
    case = fixture["cases"][name]
    points, loss, grads = run_case(fixture, name)
    torch.testing.assert_close(points["t"], case["t"], rtol=1e-6, atol=0)
    torch.testing.assert_close(points["r"], case["r"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss, case["loss_per_sample"], rtol=RTOL, atol=1e-6)
    expected = unpack(case["grads"])
    assert grads.keys() == expected.keys()
    scale = max(float(g.abs().max()) for g in expected.values())
    for key, g in expected.items():
        torch.testing.assert_close(grads[key], g, rtol=RTOL, atol=ATOL * scale, msg=lambda m, k=key: f"{name} {k}: {m}")


def test_the_cases_cover_what_they_claim(fixture: dict) -> None:
    cases = fixture["cases"]
    assert bool((cases["stage0"]["r"] == 0).any()) and bool((cases["stage0"]["r"] > 0).any())
    assert bool((cases["data_target"]["r"] == 0).all())
    assert bool((cases["stage3_huber"]["r"] > 0).all())


def test_an_unshared_dropout_mask_is_caught(fixture: dict) -> None:
    _, loss, _ = run_case(fixture, "dropout", shared_dropout=False)
    expected = fixture["cases"]["dropout"]["loss_per_sample"]
    positive = fixture["cases"]["dropout"]["r"].flatten() > 0
    assert not torch.allclose(loss[positive], expected[positive], rtol=1e-3)


def test_two_step_sampling_matches_the_reference(fixture: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registered "consistency" sampler at sigma_min 0.003 (ECT's recipe) on the reference's
    noise: it re-noises with sqrt(s^2 - 0.003^2) e where the reference uses s e (a relative 7e-6 at
    s = 0.821, inside the tolerance)."""
    sample = fixture["sample"]
    net = network(fixture, 0, 0.0).eval()
    z = sample["z"]
    with Replay(sample["draws"]) as replay:
        fresh = torch.stack([torch.randn_like(z) for _ in sample["mid_t"]])
    replay.assert_exhausted()
    monkeypatch.setattr(diffusion, "per_sample_noise", lambda noise, steps: fresh[:steps])
    recipe = {"sampler": "consistency", "sigmas": [80.0, *sample["mid_t"]], "sigma_min": ECT_SIGMA_MIN}
    images = diffusion.sample(net, z, None, recipe)
    torch.testing.assert_close(images, sample["images"], rtol=RTOL, atol=1e-5)


# -- the plugin: one update through a StepContext sees the reference's gradients ---------------------
def run_plugin(fixture: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """`method=ect`'s own iteration (`ECT.train_step` -> `ctx.update`: sum over the batch, divided
    by it, sanitised, RAdam) on the fixture's network, images and draws; the random state the
    reference's loss started from is the micro-batch's (the dropout masks come from it)."""
    from draws import step_gradients

    from sidbench.config import compose
    from sidbench.methods.baselines.ect.method import ECT
    from sidbench.teachers.teacher import Teacher
    from sidbench.trainer.context import StepContext

    case = fixture["cases"][name]
    s = case["settings"]
    net = network(fixture, s["label_dim"], s["dropout"])
    teacher = Teacher(net.eval().requires_grad_(False), {"precond": "EDMPrecond", "label_dim": s["label_dim"],
                                                         "dropout": s["dropout"], **fixture["network"]}, "fixture")
    overrides = {"p_mean": s["P_mean"], "p_std": s["P_std"], "q": s["q"], "k": s["k"], "b": s["b"], "mapping": s["adj"],
                 "c": s["c"], "dropout": s["dropout"]}
    cfg = compose(["method=ect", "dataset=digits", *[f"method.{k}={v}" for k, v in overrides.items()]])
    ect = ECT(teacher, cfg.method, torch.device("cpu"), cfg)
    if s["stage"]:
        ect.enter_stage(s["stage"], ect.stages()[s["stage"]])
    x = fixture["x"]
    labels = torch.nn.functional.one_hot(fixture["classes"], fixture["label_dim"]).float() if s["label_dim"] else None
    ctx = StepContext(ect.networks(), ect.optimizers(), torch.device("cpu"), batch=len(x))
    monkeypatch.setattr(ctx, "real", lambda n: (x[:n], None if labels is None else labels[:n]))
    monkeypatch.setattr(ctx, "_seed_micro_batch", lambda update, micro: torch.set_rng_state(case["rng_state"]))
    seen = step_gradients(ect.opt, {p: k for k, p in ect.generator.named_parameters()})
    with Replay(case["draws"]) as replay:
        logs = ect.train_step(ctx)
    replay.assert_exhausted()
    return logs, seen


@pytest.mark.parametrize("name", ["stage0", "stage3_huber", "dropout", "data_target", "const_cond"])
def test_the_plugins_update_sees_the_references_gradients(fixture: dict, name: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    case = fixture["cases"][name]
    logs, seen = run_plugin(fixture, name, monkeypatch)
    assert float(logs["ect"]) == pytest.approx(float(case["loss_per_sample"].mean()), rel=RTOL)
    expected = unpack(case["grads"])
    assert seen.keys() == expected.keys()
    scale = max(float(g.abs().max()) for g in expected.values())
    for key, g in expected.items():
        torch.testing.assert_close(seen[key], g, rtol=RTOL, atol=ATOL * scale, msg=lambda m, k=key: f"{name} {k}: {m}")
