"""Budgets end runs at equal compute; evaluation points sit at the same fractions of the budget."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.diffusion import register_sampler
from sidbench.methods.base import Method
from sidbench.testing.gaussian import GaussianTeacher, random_gaussian
from sidbench.trainer.budget import Budget, log_fractions
from sidbench.trainer.loop import Trainer


@register_sampler("linear")
def linear_sampler(net, noise, labels, sigmas):  # noqa: ANN001, ANN201
    """The toy's generator on the noise as it is."""
    return net(noise).reshape(noise.shape)


class Regress(Method):
    """A toy whose iteration calls its network `calls` times: methods of different cost."""

    def __init__(self, teacher: GaussianTeacher, calls: int) -> None:
        super().__init__(teacher, OmegaConf.create({}), torch.device("cpu"))
        self.generator = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 64), torch.nn.Linear(64, 4))
        self.opt = torch.optim.SGD(self.generator.parameters(), lr=1e-3)
        self.calls = calls

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt}

    def sampling(self) -> dict:
        return {"sampler": "linear", "nfe": 1}

    def train_step(self, ctx) -> dict[str, torch.Tensor]:  # noqa: ANN001
        def loss_fn(n: int) -> tuple[torch.Tensor, dict]:
            x = torch.randn(n, 1, 2, 2)
            loss = sum(ctx.net("generator")(x).square().sum() for _ in range(self.calls))
            return loss, {"loss": loss.detach() / n}

        return ctx.update("generator", loss_fn)


class Recorder:
    """An evaluator stand-in: records the budget fraction at which it was called."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.fractions: list[float] = []

    def __call__(self, sample_fn) -> dict[str, float]:  # noqa: ANN001
        p = self.trainer.progress
        self.fractions.append(self.trainer.budget.fraction(p.counters()))
        return {"eval/x": 0.0}


def trainer_cfg(**over: object) -> OmegaConf:
    base = {"kimg": None, "budget": {"unit": "flops", "value": 2e7}, "batch": 16, "batch_gpu": None, "precision": "fp32",
            "ema_halflife_kimg": 1, "ema_rampup": None, "seed": 0, "tick_kimg": 0.016, "eval_every_kimg": 0,
            "checkpoint_every_kimg": 0, "max_nonfinite": 3, "sample_grids": False}
    return OmegaConf.create({**base, **over})


def run(calls: int, tmp_path: Path, **over: object) -> tuple[Trainer, Recorder]:
    teacher = GaussianTeacher(*random_gaussian(4))
    recorder = Recorder()
    trainer = Trainer(trainer_cfg(**over), Regress(teacher, calls), tmp_path / str(calls), torch.device("cpu"), evaluator=recorder)
    recorder.trainer = trainer
    trainer.train()
    return trainer, recorder


def test_methods_of_different_cost_end_within_one_iteration_of_the_same_flops_budget(tmp_path: Path) -> None:
    # per iteration of 16 images: forward 2*16*(4*64+64*4) FLOPs per call, backward twice that
    # less the first layer's input gradient
    ends = {}
    for calls in (1, 3):
        trainer, _ = run(calls, tmp_path)
        p = trainer.progress
        per_iteration = p.flops / p.iteration
        assert 2e7 <= p.flops < 2e7 + per_iteration, (calls, p.flops, per_iteration)
        ends[calls] = (p.flops, per_iteration, p.images_seen)
    (fa, ia, na), (fb, ib, nb) = ends[1], ends[3]
    assert abs(fa - fb) < max(ia, ib)
    assert na > 2 * nb  # the cheaper method saw more images for the same compute
    forward = 2 * 16 * (4 * 64 + 64 * 4)
    assert ia == forward + (2 * 16 * 4 * 64 + 2 * 2 * 16 * 64 * 4)


@pytest.mark.parametrize("unit,value", [("kimg", 0.16), ("passes", 480.0)])
def test_kimg_and_passes_budgets(tmp_path: Path, unit: str, value: float) -> None:
    trainer, _ = run(1, tmp_path, budget={"unit": unit, "value": value})
    # 3 passes per image (forward and a trained backward): 480 passes = 160 images = 10 iterations
    assert trainer.progress.images_seen == 160 and trainer.progress.passes == 480


def test_kimg_shorthand_replaces_the_budget(tmp_path: Path) -> None:
    trainer, _ = run(1, tmp_path, kimg=0.048)
    assert trainer.budget == Budget("kimg", 0.048) and trainer.progress.images_seen == 48


def test_evaluation_points_at_fractions_of_the_budget(tmp_path: Path) -> None:
    _, rec = run(1, tmp_path, budget={"unit": "passes", "value": 4800.0}, eval_at_fraction=[0.5],
                 eval_log_points={"count": 3, "first": 0.1})
    # at the start, then at the first iteration at or past 0.1, ~0.316, 0.5 and 1 of the budget
    # (48 passes per iteration = 1% of the budget)
    assert rec.fractions[0] == 0
    assert rec.fractions[1:] == pytest.approx([0.1, 0.32, 0.5, 1.0], abs=0.0101)
    assert log_fractions(3, 0.01) == pytest.approx([0.01, 0.1, 1.0])


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown budget unit 'images'"):
        Budget("images", 3)
    with pytest.raises(ValueError, match="must be > 0"):
        Budget("flops", 0)
