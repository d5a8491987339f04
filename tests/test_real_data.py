"""Real training images for methods that use them: EDM dataset zips and folders, the bundled digits,
draws fixed by the micro-batch's position, and one-line errors when the images are missing or wrong."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sidbench.config import compose
from sidbench.data.real import DataError, open_edm_dataset, open_real_images
from sidbench.diffusion import register_sampler
from sidbench.methods.base import Method
from sidbench.testing.edm_dataset import flat_edm_zip, flat_png
from sidbench.testing.tiny import tiny_overrides
from sidbench.trainer.context import StepContext

CPU = torch.device("cpu")


def test_zip_draws_images_with_their_labels(tmp_path: Path) -> None:
    data = open_edm_dataset(flat_edm_zip(tmp_path / "d.zip", 6, (3, 8, 8), labels=True), (3, 8, 8), label_dim=3)
    assert len(data) == 6
    torch.manual_seed(1)
    images, labels = data.draw(16, CPU)
    assert images.shape == (16, 3, 8, 8) and labels.shape == (16, 3)
    assert images.min() >= -1 and images.max() <= 1
    # each drawn image is flat at 5*i scaled to [-1, 1]; its label must be i % 3
    index = torch.round((images[:, 0, 0, 0] + 1) * 127.5 / 5).long()
    assert torch.equal(labels.argmax(1), index % 3)
    assert len(set(index.tolist())) > 1  # random, with replacement
    torch.manual_seed(1)
    again, _ = data.draw(16, CPU)
    assert torch.equal(images, again)  # the caller's random state decides the draw


def test_folder_without_labels_for_an_unconditional_teacher(tmp_path: Path) -> None:
    folder = tmp_path / "imgs" / "00000"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"img{i:08d}.png").write_bytes(flat_png(100 + i, (1, 8, 8)))
    images, labels = open_edm_dataset(tmp_path / "imgs", (1, 8, 8), label_dim=0).draw(4, CPU)
    assert images.shape == (4, 1, 8, 8) and labels is None


def test_bundled_digits_are_the_default_images_of_the_digits_cards() -> None:
    from sidbench.data.digits import load_digits_tensors

    pixels, classes = load_digits_tensors()
    data = open_real_images(compose(["dataset=digits-cond"]).dataset, (1, 8, 8), label_dim=10)
    torch.manual_seed(0)
    images, labels = data.draw(8, CPU)
    torch.manual_seed(0)
    index = torch.randint(len(pixels), (8,))
    assert torch.equal(images, pixels[index]) and torch.equal(labels.argmax(1), classes[index])


@pytest.mark.parametrize(("case", "expected"), [
    ("missing", "do not exist; set dataset.images.path="),
    ("shape", "are 3x8x8 (CxHxW) but the teacher makes 3x16x16"),
    ("labels", "has no label for 00000/img00000000.png (4 of 4 images)"),
    ("unset", "dataset cifar10 has none configured; set dataset.images.path="),
])
def test_unusable_images_are_one_line(tmp_path: Path, case: str, expected: str) -> None:
    with pytest.raises(DataError) as e:
        if case == "missing":
            open_edm_dataset(tmp_path / "nope.zip", (3, 8, 8), 0)
        elif case == "shape":
            open_edm_dataset(flat_edm_zip(tmp_path / "d.zip", 4, (3, 8, 8), labels=False), (3, 16, 16), 0)
        elif case == "labels":
            open_edm_dataset(flat_edm_zip(tmp_path / "d.zip", 4, (3, 8, 8), labels=False), (3, 8, 8), 3)
        else:
            open_real_images(compose(["dataset=cifar10"]).dataset, (3, 32, 32), 0)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_context_draws_real_images_by_micro_batch_position(tmp_path: Path) -> None:
    data = open_edm_dataset(flat_edm_zip(tmp_path / "d.zip", 50, (1, 8, 8), labels=False), (1, 8, 8), 0)
    net = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)

    def draws(iteration: int) -> list[torch.Tensor]:
        ctx = StepContext({"g": net}, {"g": opt}, CPU, batch=8, batch_gpu=4, seed=3, real_data=data)
        ctx.iteration = iteration
        seen: list[torch.Tensor] = []

        def loss(n: int) -> tuple[torch.Tensor, dict[str, float]]:
            x, _ = ctx.real(n)
            seen.append(x)
            return net(x).sum(), {}

        ctx.update("g", loss)
        return seen

    first, again, later = draws(5), draws(5), draws(6)
    assert len(first) == 2 and not torch.equal(first[0], first[1])  # two micro-batches, two draws
    assert all(torch.equal(a, b) for a, b in zip(first, again))     # same position, same images
    assert not torch.equal(first[0], later[0])
    with pytest.raises(RuntimeError, match="uses_real_data"):
        StepContext({"g": net}, {"g": opt}, CPU, batch=8).real(2)


@register_sampler("conv")
def conv_sampler(net: torch.nn.Module, noise: torch.Tensor, labels: torch.Tensor | None, sigmas: torch.Tensor) -> torch.Tensor:
    """The toy's generator on the noise as it is, clamped to the image range."""
    return net(noise).clamp(-1, 1)


class FitsRealImages(Method):
    """A toy method that trains a generator toward real images: it shows the run's wiring."""

    drawn: list[torch.Tensor] = []

    @classmethod
    def uses_real_data(cls, cfg: Any) -> bool:
        return True

    def __init__(self, teacher: Any, cfg: Any, device: torch.device, full_cfg: Any = None) -> None:
        super().__init__(teacher, cfg, device, full_cfg)
        self.generator = torch.nn.Conv2d(1, 1, 3, padding=1)
        self._opt = {"generator": torch.optim.Adam(self.generator.parameters(), lr=1e-3)}

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._opt

    def sampling(self) -> dict:
        return {"sampler": "conv", "nfe": 1}

    @classmethod
    def plan_networks(cls, cfg: Any, teacher_constructor: dict) -> dict:
        return {"generator": {"precond": "none", "note": "a 3x3 convolution"}}

    def train_step(self, ctx: StepContext) -> dict[str, float]:
        def loss(n: int) -> tuple[torch.Tensor, dict[str, float]]:
            x, _ = ctx.real(n)
            FitsRealImages.drawn.append(x)
            return ((ctx.net("generator")(torch.randn_like(x)) - x) ** 2).sum(), {}

        return ctx.update("generator", loss)


def test_a_run_opens_the_images_for_a_method_that_uses_them(tiny_teacher: Path, run_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sidbench.run as run_module
    from sidbench.data.digits import load_digits_tensors

    class OnlyTheToy:  # the run's registry, with the toy under every name
        @staticmethod
        def get(name: str) -> type[Method]:
            return FitsRealImages

    monkeypatch.setattr(run_module, "METHODS", OnlyTheToy)
    FitsRealImages.drawn = []
    run_module.run(compose([*tiny_overrides(tiny_teacher), "tracking.enabled=false", "run_name=real"]))
    pixels = set(load_digits_tensors()[0].unique().tolist())
    assert len(FitsRealImages.drawn) == 8  # 8 iterations of one micro-batch
    assert all(set(x.unique().tolist()) <= pixels for x in FitsRealImages.drawn)  # digits, not noise
