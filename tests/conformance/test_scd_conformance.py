"""sCD's loss against NVIDIA FastGen's sCM (fastgen/methods/consistency_model/sCM.py, arXiv
2410.11081; fixtures/scd.json says what make_scd.py recorded, from which commit).

Each case runs sidbench's pure functions (methods/baselines/scd/loss.py: `sample_sigma`, `trigflow_time`,
`trigflow_noise`, `teacher_velocity`, `denoiser_F`, `tangent_jvp`, `tangent`, `normalize_tangent`,
`scd_loss`, the `LogVarianceHead`) on sidbench's EDMPrecond student and teacher loaded with
FastGen's weights (FastGen's `model.logvar_linear` goes to the separate head), the reference's
draws replayed (the uniform behind the truncated lognormal sigma, z), then `loss.mean()` backward
as FastGen's step does. It compares every intermediate FastGen hands its `_scm_pred_to_loss` (sigma,
t, x_t, dx_t/dt, F, logvar, the scaled JVP), the per-sample losses and the gradients per student
parameter and of the head. The same cases then run `method=scd`'s own iteration (`SCD.train_step`
through a `StepContext`, the student and the head updated together) and compare what its two
optimisers see, and the warm-up ratio exactly.

Tolerances (float32 networks; FastGen computes the TrigFlow <-> EDM coefficients and the network's
c_in, c_noise, c_skip, c_out in float64, sidbench's EDMPrecond in float32, so outputs differ by
float32 round-off of those coefficients, amplified by 1/sin t in F): intermediates rtol 1e-4 with an
atol of 1e-5 of the tensor's largest value, the JVP an atol of 1e-4 of its largest value (measured:
up to 2e-5 of it, in elements a thousand times smaller than the largest); the per-sample losses rtol
1e-4 (atol 1e-6); gradients rtol 1e-4 with an atol of 1e-4 of the largest gradient (they carry the
round-off of F and of the JVP through the normalised tangent).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from draws import Replay
from make_consistency import unpack

from sidbench.methods.baselines.consistency import rng
from sidbench.methods.baselines.scd.loss import (
    LogVarianceHead, denoiser_F, normalize_tangent, sample_sigma, scd_loss, tangent, tangent_jvp, teacher_velocity,
    trigflow_noise, trigflow_time, warmup_ratio,
)
from sidbench.teachers.networks import build_edm_network

FIXTURE = Path(__file__).parent / "fixtures" / "scd.pt"
HEAD_KEYS = {"model.logvar_linear.weight": "linear.weight", "model.logvar_linear.bias": "linear.bias"}
RTOL = 1e-4
CASES = ["cifar10", "imagenet64", "paper_norms", "high_noise"]


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def networks(fixture: dict, kind: str) -> tuple[torch.nn.Module, LogVarianceHead, torch.nn.Module]:
    constructor = {"precond": "EDMPrecond", **fixture["networks"][kind]}
    nets = {}
    for role in ("student", "teacher"):
        state = unpack(fixture["weights"][kind][role])
        net = build_edm_network(constructor)
        net.load_state_dict({k: v for k, v in state.items() if k not in HEAD_KEYS}, strict=True)
        nets[role] = (net, state)
    student, state = nets["student"]
    head = LogVarianceHead.for_network(student)
    head.load_state_dict({HEAD_KEYS[k]: state[k] for k in HEAD_KEYS}, strict=True)
    teacher = nets["teacher"][0].eval().requires_grad_(False)
    return student.train(), head, teacher


def run_case(fixture: dict, name: str) -> tuple[dict, torch.Tensor, dict]:
    case = fixture["cases"][name]
    st, lc = case["settings"]["sample_t"], case["settings"]["loss"]
    student, head, teacher = networks(fixture, case["settings"]["nets"])
    x0 = fixture["x"]
    labels = None
    if fixture["networks"][case["settings"]["nets"]]["label_dim"]:
        labels = torch.nn.functional.one_hot(fixture["classes"], fixture["label_dim"]).float()
    sd = st["sigma_data"]
    with Replay(case["draws"]) as replay:
        sigma = sample_sigma(len(x0), st["train_p_mean"], st["train_p_std"], st["min_t"], st["max_t"])
        t = trigflow_time(sigma, sd)
        z = torch.randn_like(x0) * sd
        x_t = trigflow_noise(x0, z, t)
        dxdt = teacher_velocity(teacher, x_t, t, labels, sd)
        state = rng.capture(x0.device)
        F = denoiser_F(student, x_t, t, labels, sd)
        logvar = head(sigma)
        F_dot = tangent_jvp(lambda x, s: denoiser_F(student, x, s, labels, sd), x_t, t, dxdt, state=state)
        ratio = warmup_ratio(case["settings"]["iteration"], lc["tangent_warmup_steps"])
        g = tangent(F.detach(), F_dot, x_t, t, dxdt, ratio, sd)
        g = normalize_tangent(g, lc["tangent_warmup_const"], "rms" if lc["g_norm_spatial_invariance"] else "l2")
        loss = scd_loss(F, g, logvar, sigma, prior_weighting=lc["prior_weighting_enabled"],
                        divide_by_dim=lc["divide_x_0_spatial_dim"])
    replay.assert_exhausted()
    loss.mean().backward()
    grads = {k: p.grad for k, p in student.named_parameters() if p.grad is not None}
    grads.update({k: dict(head.named_parameters())[v].grad for k, v in HEAD_KEYS.items()})
    outputs = {"sigma_t": sigma, "t_hat": t, "x_t_hat": x_t, "dxt_dt": dxdt, "F_theta": F.detach(),
               "logvar": logvar.detach().reshape(-1, 1), "F_theta_jvp": F_dot, "warmup_ratio": ratio}
    return outputs, loss.detach(), grads


@pytest.mark.parametrize("name", CASES)
def test_intermediates_loss_and_gradients_match_fastgen(fixture: dict, name: str) -> None:
    case = fixture["cases"][name]
    outputs, loss, grads = run_case(fixture, name)
    assert outputs["warmup_ratio"] == case["outputs"]["warmup_ratio"]
    for key, expected in case["outputs"].items():
        if key == "warmup_ratio":
            continue
        scale = float(expected.abs().max()) * (1e-4 if key == "F_theta_jvp" else 1e-5)
        torch.testing.assert_close(outputs[key].to(expected.dtype), expected, rtol=RTOL, atol=scale,
                                   msg=lambda m, k=key: f"{name} {k}: {m}")
    torch.testing.assert_close(loss, case["loss_per_sample"].to(loss.dtype), rtol=RTOL, atol=1e-6)
    expected = unpack(case["grads"])
    assert grads.keys() == expected.keys()
    scale = max(float(g.abs().max()) for g in expected.values())
    for key, g in expected.items():
        torch.testing.assert_close(grads[key], g, rtol=RTOL, atol=1e-4 * scale, msg=lambda m, k=key: f"{name} {k}: {m}")


def test_the_cases_cover_what_they_claim(fixture: dict) -> None:
    cases = fixture["cases"]
    assert cases["cifar10"]["outputs"]["warmup_ratio"] < 1 and cases["imagenet64"]["outputs"]["warmup_ratio"] == 1
    assert float(cases["high_noise"]["outputs"]["sigma_t"].max()) > 10
    assert float(cases["imagenet64"]["outputs"]["sigma_t"].min()) < 0.05


# -- the plugin: one update through a StepContext sees FastGen's gradients ----------------------------
def run_plugin(fixture: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """`method=scd`'s own iteration (`SCD.train_step` -> `ctx.update` over the student and the
    log-variance head: sum over the batch, divided by it, sanitised, RAdam each) on the fixture's
    networks, images and draws, at the fixture's iteration."""
    from draws import step_gradients

    from sidbench.config import compose
    from sidbench.methods.baselines.scd.method import SCD
    from sidbench.teachers.teacher import Teacher
    from sidbench.trainer.context import StepContext

    case = fixture["cases"][name]
    st, lc = case["settings"]["sample_t"], case["settings"]["loss"]
    student, head, teacher_net = networks(fixture, case["settings"]["nets"])
    constructor = {"precond": "EDMPrecond", **fixture["networks"][case["settings"]["nets"]]}
    teacher = Teacher(teacher_net, constructor, "fixture")
    overrides = {"p_mean": st["train_p_mean"], "p_std": st["train_p_std"], "sigma_min": st["min_t"],
                 "sigma_max": st["max_t"], "tangent_warmup_iterations": lc["tangent_warmup_steps"],
                 "tangent_c": lc["tangent_warmup_const"], "tangent_norm": "rms" if lc["g_norm_spatial_invariance"] else "l2",
                 "prior_weighting": lc["prior_weighting_enabled"], "divide_by_dim": lc["divide_x_0_spatial_dim"],
                 "dropout": constructor.get("dropout", 0.0)}
    cfg = compose(["method=scd", "dataset=digits", *[f"method.{k}={v}" for k, v in overrides.items()]])
    scd = SCD(teacher, cfg.method, torch.device("cpu"), cfg)
    scd.generator.load_state_dict(student.state_dict())
    scd.logvar.load_state_dict(head.state_dict())
    x0 = fixture["x"]
    labels = None
    if constructor["label_dim"]:
        labels = torch.nn.functional.one_hot(fixture["classes"], fixture["label_dim"]).float()
    ctx = StepContext(scd.networks(), scd.optimizers(), torch.device("cpu"), batch=len(x0))
    ctx.iteration = case["settings"]["iteration"] - 1  # FastGen counts from 1, the trainer from 0
    monkeypatch.setattr(ctx, "real", lambda n: (x0[:n], None if labels is None else labels[:n]))
    head_names = {v: k for k, v in HEAD_KEYS.items()}
    seen = step_gradients(scd.opts["generator"], {p: k for k, p in scd.generator.named_parameters()})
    seen_head = step_gradients(scd.opts["logvar"], {p: head_names[k] for k, p in scd.logvar.named_parameters()
                                                    if k in head_names})
    with Replay(case["draws"]) as replay:
        logs = scd.train_step(ctx)
    replay.assert_exhausted()
    return {**logs, **ctx.take_logs()}, {**seen, **seen_head}


@pytest.mark.parametrize("name", CASES)
def test_the_plugins_update_sees_fastgens_gradients(fixture: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = fixture["cases"][name]
    logs, seen = run_plugin(fixture, name, monkeypatch)
    assert logs["tangent_ratio"] == case["outputs"]["warmup_ratio"]  # exactly: the iteration FastGen counts
    assert float(logs["scd"]) == pytest.approx(float(case["loss_per_sample"].double().mean()), rel=RTOL)
    expected = unpack(case["grads"])
    assert seen.keys() == expected.keys()
    scale = max(float(g.abs().max()) for g in expected.values())
    for key, g in expected.items():
        torch.testing.assert_close(seen[key], g, rtol=RTOL, atol=1e-4 * scale, msg=lambda m, k=key: f"{name} {k}: {m}")
