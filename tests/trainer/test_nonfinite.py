"""A loss that stays non-finite stops the run with a diagnosis and keeps the last good checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.methods.base import Method
from sidbench.testing.gaussian import GaussianTeacher, random_gaussian
from sidbench.trainer.checkpoint import load_checkpoint
from sidbench.trainer.loop import NonFiniteLossError, Trainer


class BreaksAfter(Method):
    """Regresses the generator onto a fixed target, then produces NaN losses from `break_at` on."""

    def __init__(self, teacher: GaussianTeacher, break_at: int) -> None:
        super().__init__(teacher, OmegaConf.create({}), torch.device("cpu"))
        self.generator = teacher.init_generator()
        self.opt = torch.optim.SGD(self.generator.parameters(), lr=0.1)
        self.break_at = break_at
        self.calls = 0

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt}

    def sampling(self) -> dict:
        return {"sampler": "one_step", "sigmas": [1.0], "nfe": 1}

    def train_step(self, ctx) -> dict[str, float]:  # noqa: ANN001
        self.calls += 1
        poison = float("nan") if self.calls > self.break_at else 1.0

        def loss_fn(n: int) -> tuple[torch.Tensor, dict[str, float]]:
            x = ctx.net("generator")(torch.randn(n, 1, 2, 2), torch.ones(n), None)
            loss = (x**2).sum() * poison
            return loss, {"regression": loss.item() / n}

        return ctx.update("generator", loss_fn)


def test_persistent_nan_stops_with_diagnosis_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    teacher = GaussianTeacher(*random_gaussian(4))
    method = BreaksAfter(teacher, break_at=6)
    cfg = OmegaConf.create({"kimg": 1.0, "budget": None, "batch": 8, "batch_gpu": None, "precision": "fp32", "ema_halflife_kimg": 1,
                            "ema_rampup": None, "seed": 0, "tick_kimg": 0.008, "eval_every_kimg": 0,
                            "checkpoint_every_kimg": 0.016, "max_nonfinite": 3, "sample_grids": False})
    trainer = Trainer(cfg, method, tmp_path, torch.device("cpu"))
    with pytest.raises(NonFiniteLossError) as e:
        trainer.train()
    message = str(e.value)
    assert "regression" in message and "3 iterations in a row" in message and str(tmp_path / "checkpoint.pt") in message
    assert "\n" not in message
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    # checkpoints every 2 iterations: the last good one is after iteration 6, before the NaNs
    assert state["progress"]["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in state["networks"]["generator"].values())
    assert method.calls == 9  # stopped after the third non-finite iteration, not at kimg
