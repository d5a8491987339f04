"""Small offline stand-ins for the FID tests: a TorchScript "Inception" file and tiny detectors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


class StandInInception(torch.nn.Module):
    """Mimics the interface of the Inception TorchScript file that clean-fid wraps.

    `forward(img, return_features)` takes float pixels 0..255 of any size and resizes to 299x299
    inside (legacy mode); `layers` takes normalised 299x299 input (clean mode). Output: 2048 values,
    the width clean-fid's wrapper insists on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(192, 2048), torch.nn.Tanh()
        )

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


class TinyDetector(torch.nn.Module):
    """A small-width detector with clean-fid's wrapper interface (`resize_inside`, float 0..255)."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.resize_inside = True
        with torch.random.fork_rng():  # fixed weights without disturbing the tests' RNG
            torch.manual_seed(1)
            self.proj = torch.nn.Linear(3 * 4 * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.resize_inside:
            assert x.shape[-2:] == (299, 299)
        x = F.adaptive_avg_pool2d((x - 128) / 128, 4).flatten(1)
        return torch.sin(3 * self.proj(x))


@pytest.fixture(scope="session")
def standin_weights(tmp_path_factory) -> str:
    """A TorchScript stand-in for inception-2015-12-05.pt under a different file name."""
    path = tmp_path_factory.mktemp("weights") / "standin-inception.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = StandInInception().eval()
    torch.jit.script(net).save(str(path))
    return str(path)


@pytest.fixture
def tiny_detector() -> TinyDetector:
    return TinyDetector()


@pytest.fixture(autouse=True)
def _no_inception_env(monkeypatch):
    # A developer's own $SIDBENCH_INCEPTION must not leak into the tests.
    monkeypatch.delenv("SIDBENCH_INCEPTION", raising=False)
