"""The contract's `prepare`: called before the first iteration of a fresh run and of a resumed one,
charged to the run's compute once (on the fresh run); the resumed run ends where the uninterrupted
one does."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from sidbench.diffusion import register_sampler
from sidbench.methods.base import Method
from sidbench.testing.gaussian import GaussianTeacher, random_gaussian
from sidbench.trainer.loop import Trainer

PREP_IMAGES = 10  # images the toy's prepare pushes through its frozen network


@register_sampler("prepared-toy")
def toy_sampler(net, noise, labels, sigmas):  # noqa: ANN001, ANN201
    return net(noise).reshape(noise.shape)


class Prepared(Method):
    """A toy whose state (a fixed batch made by a frozen network) is built only by `prepare`, as
    teacher samples are."""

    def __init__(self, teacher: GaussianTeacher) -> None:
        super().__init__(teacher, OmegaConf.create({}), torch.device("cpu"))
        torch.manual_seed(0)
        self.generator = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4))
        self.maker = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4)).requires_grad_(False)
        self.opt = torch.optim.SGD(self.generator.parameters(), lr=1e-2)
        self.targets: torch.Tensor | None = None
        self.prepare_calls = 0

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator}

    def frozen_networks(self) -> dict[str, torch.nn.Module]:
        return {"maker": self.maker}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt}

    def sampling(self) -> dict:
        return {"sampler": "prepared-toy", "nfe": 1}

    def prepare(self, ctx) -> None:  # noqa: ANN001
        self.prepare_calls += 1
        g = torch.Generator().manual_seed(1)
        self.targets = self.maker(torch.randn(PREP_IMAGES, 1, 2, 2, generator=g))

    def train_step(self, ctx) -> dict[str, torch.Tensor]:  # noqa: ANN001
        assert self.targets is not None, "prepare was not called before the first iteration"

        def loss_fn(n: int) -> tuple[torch.Tensor, dict]:
            x = torch.randn(n, 1, 2, 2)
            loss = (ctx.net("generator")(x) - self.targets[:n]).square().sum()
            return loss, {"loss": loss.detach() / n}

        return ctx.update("generator", loss_fn)


def trainer(tmp_path: Path, kimg: float) -> Trainer:
    teacher = GaussianTeacher(*random_gaussian(4))
    cfg = OmegaConf.create({"kimg": kimg, "batch": 4, "batch_gpu": None, "precision": "fp32", "ema_halflife_kimg": 1,
                            "ema_rampup": None, "seed": 0, "tick_kimg": 0.004, "eval_every_kimg": 0,
                            "checkpoint_every_kimg": 0, "max_nonfinite": 3, "sample_grids": False, "count_flops": False})
    return Trainer(cfg, Prepared(teacher), tmp_path, torch.device("cpu"))


def test_prepare_is_charged_on_a_fresh_run(tmp_path: Path) -> None:
    t = trainer(tmp_path, kimg=0.008)
    t.train()
    assert t.method.prepare_calls == 1
    # each iteration: 4 images, a forward and a trained backward of the generator = 3 passes each;
    # prepare: 10 images through the frozen maker, 1 pass each
    assert t.progress.iteration == 2
    assert t.progress.passes == 2 * 4 * 3 + PREP_IMAGES


def test_a_resumed_run_is_prepared_again_without_a_second_charge_or_a_moved_random_state(tmp_path: Path) -> None:
    full = trainer(tmp_path / "full", kimg=0.016)
    full.train()

    first = trainer(tmp_path / "cut", kimg=0.008)
    first.train()
    first.save_checkpoint()

    resumed = trainer(tmp_path / "cut", kimg=0.016)
    assert resumed.resume()
    assert resumed.method.targets is None  # nothing but prepare rebuilds it
    resumed.train()
    assert resumed.method.prepare_calls == 1
    assert resumed.progress.passes == full.progress.passes == 4 * 4 * 3 + PREP_IMAGES
    # and it ends where the uninterrupted run does
    for a, b in zip(full.method.generator.parameters(), resumed.method.generator.parameters(), strict=True):
        assert torch.equal(a, b)
