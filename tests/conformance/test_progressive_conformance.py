"""Progressive distillation against its authors' code (fixture: make_progressive.py, whose docstring
says what was run).

1. One update. sidbench's own `ProgressiveDistillation.train_step`, through a real `StepContext`,
   replays the draws recorded while openai/consistency_models' `progdist_losses` ran (the noise and
   the step indices) on the same teacher, student and images, and the optimiser must see the
   gradients the reference's reduction (the batch mean of per-image pixel means) and the EDM-form
   configuration's clip at 1.0 give: in a case where the clip binds and one where it does not (the
   second is the one that tells a pixel sum from a pixel mean). Once with the whole batch, once in
   micro-batches of 2 (the context's accumulation must give the same batch mean).
2. The stages. The student's step count at every training step of sidbench's stages must be the
   step count of the authors' EDM-form JAX code (`get_ema_scales_fn`, recorded in the fixture).

The images x reach sidbench as its teacher samples (what `TrainingImages.prepare` would have
made), drawn by the method's own sampler: its index draw is the one draw the reference does not
make (its data loader hands it x), so the replay adds it, as the identity permutation.

Tolerance: the reference runs in float32; sidbench computes the grid in float64 (then rounds it to
float32, within an ulp of the reference's float32 arithmetic) and the teacher's Euler steps with a
float64 state. Measured: the losses agree to 2.4e-6 relative; the gradients' largest difference
is 3.2e-5 of the gradient's largest element in the "free" case (whose student is close to its
target, so the target's float32 rounding is a larger part of the error) and 3.6e-7 in "binds".
Hence rtol 1e-4 with atol 1e-4 x the gradient's largest element, and rtol 1e-5 on the loss. A
pixel sum instead of a pixel mean, no clip, or the grid ending at 0 fails it by orders of magnitude.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from draws import Replay, step_gradients

import sidbench.methods.baselines.progressive.method  # noqa: F401  (registers "progressive")
from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.methods.baselines.teacher_samples import TeacherSamples
from sidbench.teachers.load import load_teacher, save_native_teacher
from sidbench.teachers.networks import build_edm_network
from sidbench.trainer.compute import Cost
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import stage_index

FIXTURE = Path(__file__).parent / "fixtures" / "progressive.pt"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=False)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "cache"))


def make_method(fixture: dict, tmp_path: Path, **method: object):
    net = build_edm_network(fixture["constructor"])
    net.load_state_dict(fixture["teacher"])
    path = save_native_teacher(net, dict(fixture["constructor"]), tmp_path / "teacher.safetensors")
    grid = fixture["grid"]
    settings = {"final_zero": "false", "clip_grad_norm": fixture["clip"], "sigma_min": grid["sigma_min"],
                "sigma_max": grid["sigma_max"], "rho": grid["rho"], "dropout": 0.0, **method}
    cfg = compose(["method=progressive", "dataset=digits", f"dataset.teacher.path={path}",
                   *[f"method.{k}={v}" for k, v in settings.items()]])
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    return METHODS.get("progressive")(teacher, cfg.method, torch.device("cpu"), cfg)


def replayed_draws(case: dict, micro: int) -> dict[str, list[torch.Tensor]]:
    """The recorded draws cut into micro-batches, each preceded by the method's draw of which
    teacher samples to take (the identity: the samples are the fixture's x in order)."""
    (noise,), (steps,) = case["draws"]["randn_like"], case["draws"]["randint"]
    randint, randn_like = [], []
    for start in range(0, noise.shape[0], micro):
        randint += [torch.arange(start, start + micro), steps[start:start + micro]]
        randn_like.append(noise[start:start + micro])
    return {"randint": randint, "randn_like": randn_like}


@pytest.mark.parametrize("batch_gpu", [None, 2])
@pytest.mark.parametrize("name", ["binds", "free"])
def test_one_update_gives_the_references_clipped_gradients(fixture: dict, tmp_path: Path, name: str,
                                                           batch_gpu: int | None) -> None:
    case = fixture["cases"][name]
    pd = make_method(fixture, tmp_path, start_steps=case["num_scales"], final_steps=1)
    assert pd.num_steps == case["num_scales"]
    pd.student.load_state_dict(fixture["students"][name])
    x = case["x"]
    pd.images.samples = TeacherSamples(x.clone(), None, 0, Cost())
    ctx = StepContext(pd.networks(), pd.optimizers(), torch.device("cpu"), batch=x.shape[0], batch_gpu=batch_gpu)
    seen = step_gradients(pd.opt, {p: k for k, p in pd.student.named_parameters()})
    with Replay(replayed_draws(case, batch_gpu or x.shape[0])) as replay:
        logs = pd.train_step(ctx)
    replay.assert_exhausted()

    # the case is what its name says (a fact of the reference's run)
    assert (case["clip_scale"] < 1.0) == (name == "binds")
    # the logged loss is the reference's: the batch mean of per-image pixel means
    assert float(logs["progressive"]) == pytest.approx(case["loss"], rel=1e-5)
    expected = case["grads"]
    assert set(seen) == set(expected)
    scale = max(float(g.abs().max()) for g in expected.values())
    for key, grad in expected.items():
        torch.testing.assert_close(seen[key], grad, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, k=key: f"{k}: {m}")
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in seen.values())).item()
    assert norm == pytest.approx(min(case["grad_norm_before_clip"], fixture["clip"]), rel=1e-4)


@pytest.mark.parametrize("schedule", ["cifar10", "small"])
def test_stage_step_counts_follow_the_authors_schedule(fixture: dict, tmp_path: Path, schedule: str) -> None:
    ref = fixture["schedules"][schedule]
    pd = make_method(fixture, tmp_path, start_steps=ref["start_steps"], final_steps=1,
                     stage_iterations=ref["stage_iterations"], few_step_stage_factor=2)
    stages = pd.stages()
    for step, steps in ref["pairs"].tolist():
        ours = pd.steps_per_stage[stage_index(stages, 0, step)]
        assert ours == steps, f"iteration {step}: {ours} student steps, the authors' code {steps}"
