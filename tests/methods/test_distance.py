"""The baselines' shared per-sample image distance: squared error by hand, LPIPS through a stand-in
`lpips` package (the real one and its weights need not be on the machine)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from sidbench.methods.baselines import distance as dist
from sidbench.methods.baselines.distance import LPIPSUnavailableError, image_distance, load_lpips


# -- l2 ---------------------------------------------------------------------------------------------


def test_l2_is_per_sample_mean_squared_error() -> None:
    x = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(image_distance(x, target), torch.tensor([1.0, 1.0]))  # 4*1/4 and 4/4
    b = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    b[1, 0, 0, 0] = 0.0  # squared differences 4, 4, 4, 0: mean 3
    torch.testing.assert_close(image_distance(x, b, "l2"), torch.tensor([1.0, 3.0]))


def test_bad_shapes_and_unknown_distances_are_one_line_errors() -> None:
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        image_distance(x, x[:1])
    with pytest.raises(ValueError, match="unknown distance 'l1'") as info:
        image_distance(x, x, distance="l1")
    message = str(info.value)
    assert "'l2'" in message and "'lpips'" in message and "\n" not in message


# -- LPIPS ------------------------------------------------------------------------------------------


@pytest.fixture
def no_lpips_cache():
    dist._load_lpips.cache_clear()
    yield
    dist._load_lpips.cache_clear()


def test_lpips_missing_package_is_a_clear_one_line_error(monkeypatch: pytest.MonkeyPatch, no_lpips_cache: None) -> None:
    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` now raises ImportError
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(LPIPSUnavailableError, match="pip install lpips") as info:
        image_distance(x, x, distance="lpips")
    assert isinstance(info.value, RuntimeError) and "\n" not in str(info.value)


def test_lpips_channel_checks_come_before_the_package(
    monkeypatch: pytest.MonkeyPatch, no_lpips_cache: None
) -> None:
    monkeypatch.setitem(sys.modules, "lpips", None)  # a ValueError, not LPIPSUnavailableError, below
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="adapt_gray=True") as info:
        image_distance(x, x, distance="lpips")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        image_distance(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), distance="lpips")
    with pytest.raises(ValueError, match="unknown LPIPS backbone 'resnet'"):
        load_lpips("resnet")


class _RecordingLPIPS(torch.nn.Module):
    """Stands in for lpips.LPIPS: mean squared difference per image, inputs and builds recorded."""

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    built: list[str] = []

    def __init__(self, net: str = "alex", verbose: bool = True):
        super().__init__()
        self.net = net
        _RecordingLPIPS.built.append(net)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _RecordingLPIPS.seen.append((a.detach(), b.detach()))
        return ((a - b) ** 2).mean(dim=(1, 2, 3), keepdim=True)


def _fake_lpips_package(root: Path, with_linear: bool = True) -> types.ModuleType:
    pkg = root / "lpips"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if with_linear:
        (pkg / "weights" / "v0.1" / "vgg.pth").write_bytes(b"")
    module = types.ModuleType("lpips")
    module.__file__ = str(pkg / "__init__.py")
    module.LPIPS = _RecordingLPIPS
    return module


def _hub_with_vgg(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = root / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))


def test_lpips_missing_weights_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_lpips_cache: None
) -> None:
    monkeypatch.setitem(sys.modules, "lpips", _fake_lpips_package(tmp_path / "a", with_linear=False))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(LPIPSUnavailableError, match="linear weights missing"):
        image_distance(x, x, distance="lpips")

    monkeypatch.setitem(sys.modules, "lpips", _fake_lpips_package(tmp_path / "b"))
    _RecordingLPIPS.built.clear()
    with pytest.raises(LPIPSUnavailableError) as info:
        image_distance(x, x, distance="lpips")
    message = str(info.value)
    assert "VGG16_Weights.IMAGENET1K_V1" in message and str(tmp_path / "hub" / "checkpoints" / "vgg16-") in message
    assert "\n" not in message
    assert _RecordingLPIPS.built == []  # checked before building: torchvision never tries to download


def test_lpips_weights_that_fail_to_load_are_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_lpips_cache: None
) -> None:
    fake = _fake_lpips_package(tmp_path)

    def offline(**kwargs: object) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore detail")

    fake.LPIPS = offline
    monkeypatch.setitem(sys.modules, "lpips", fake)
    _hub_with_vgg(tmp_path, monkeypatch)
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(LPIPSUnavailableError, match="net='vgg'") as info:
        image_distance(x, x, distance="lpips")
    assert "\n" not in str(info.value) and "name resolution" in str(info.value)


def test_lpips_gets_rgb_images_at_the_resize_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_lpips_cache: None
) -> None:
    monkeypatch.setitem(sys.modules, "lpips", _fake_lpips_package(tmp_path))
    _hub_with_vgg(tmp_path, monkeypatch)
    _RecordingLPIPS.seen.clear()
    _RecordingLPIPS.built.clear()

    # constant images stay constant under bilinear resizing: the distance is (0.5 - (-0.5))^2 = 1
    x = torch.full((2, 1, 8, 8), 0.5, requires_grad=True)
    target = torch.full((2, 1, 8, 8), -0.5)
    got = image_distance(x, target, distance="lpips", adapt_gray=True)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0]))
    a, b = _RecordingLPIPS.seen[-1]
    assert a.shape == (2, 3, 224, 224) and b.shape == (2, 3, 224, 224)
    torch.testing.assert_close(a, torch.full_like(a, 0.5))  # still in [-1, 1]: no rescaling to [0, 1]
    got.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # the metric passes gradients to x

    image_distance(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), distance="lpips", lpips_resize=None)
    assert _RecordingLPIPS.seen[-1][0].shape == (1, 3, 8, 8)
    # loaded once for both calls, frozen
    assert _RecordingLPIPS.built == ["vgg"]
    model = load_lpips("vgg", torch.device("cpu"))
    assert _RecordingLPIPS.built == ["vgg"] and not model.training


# -- LPIPS pooling ----------------------------------------------------------------------------------


def test_average_pooling_replaces_every_vgg_max_pooling() -> None:
    """piq's replace_pooling on the VGG16 backbone: each 2x2 stride-2 max pooling becomes a 2x2
    stride-2 average pooling, nothing else changes (the weights stay where they were)."""
    from torchvision.models import vgg16

    model = torch.nn.Module()
    model.net = vgg16(weights=None).features
    convs = [m.weight for m in model.net if isinstance(m, torch.nn.Conv2d)]
    assert dist.with_pooling(model, "max") is model and sum(isinstance(m, torch.nn.MaxPool2d) for m in model.net) == 5
    dist.with_pooling(model, "avg")
    pools = [m for m in model.net if isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d))]
    assert len(pools) == 5 and all(type(m) is torch.nn.AvgPool2d for m in pools)
    assert all((m.kernel_size, m.stride, m.padding) == (2, 2, 0) for m in pools)
    assert [m.weight for m in model.net if isinstance(m, torch.nn.Conv2d)] == convs
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(pools[0](x), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))

    other = torch.nn.Module()
    other.net = torch.nn.Sequential(torch.nn.MaxPool2d(3, 2))  # AlexNet's: no average-pooling variant
    with pytest.raises(ValueError, match="2x2 stride-2 max pooling only"):
        dist.with_pooling(other, "avg")


def test_pooling_names_are_checked_before_the_package(monkeypatch: pytest.MonkeyPatch, no_lpips_cache: None) -> None:
    monkeypatch.setitem(sys.modules, "lpips", None)
    with pytest.raises(ValueError, match="unknown LPIPS pooling 'min'"):
        load_lpips("vgg", pooling="min")
    with pytest.raises(ValueError, match="vgg backbone only") as info:
        load_lpips("alex", pooling="avg")
    assert "\n" not in str(info.value)


class _PoolingLPIPS(_RecordingLPIPS):
    """A stand-in with a backbone `net` holding one VGG-style max pooling."""

    def __init__(self, net: str = "alex", verbose: bool = True):
        super().__init__(net, verbose)
        self.net = torch.nn.Sequential(torch.nn.MaxPool2d(kernel_size=2, stride=2))


def test_load_lpips_builds_each_pooling_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_lpips_cache: None) -> None:
    fake = _fake_lpips_package(tmp_path)
    fake.LPIPS = _PoolingLPIPS
    monkeypatch.setitem(sys.modules, "lpips", fake)
    _hub_with_vgg(tmp_path, monkeypatch)
    _RecordingLPIPS.built.clear()
    assert type(load_lpips("vgg").net[0]) is torch.nn.MaxPool2d  # the default: LPIPS as published
    avg = load_lpips("vgg", "cpu", "avg")
    assert type(avg.net[0]) is torch.nn.AvgPool2d and not avg.training
    x = torch.zeros(1, 3, 8, 8)
    image_distance(x, x, distance="lpips", lpips_pooling="avg")
    image_distance(x, x, distance="lpips")
    assert _RecordingLPIPS.built == ["vgg", "vgg"]  # one model per pooling, each loaded once
