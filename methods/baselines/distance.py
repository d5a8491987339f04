"""Per-sample image distances shared by the baselines' losses: squared error and LPIPS (arXiv 1801.03924).

DMD's regression loss (arXiv 2311.18828) and consistency distillation's loss (arXiv 2303.01469)
are both `image_distance(student, target)`, one value per sample, for the method to reduce.

LPIPS comes in two poolings of the VGG backbone: the standard one with max pooling (the `lpips`
package as published; consistency models' CIFAR-10 code uses a port of it), and average pooling,
which consistency models' ImageNet 64 code uses (`piq.LPIPS(replace_pooling=True)`: the same
VGG16 layers, linear weights, input normalisation and spatial mean, with every 2x2 max pooling
replaced by a 2x2 average pooling). Both are built here on the `lpips` package.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from sidbench.errors import UserError

__all__ = ["DISTANCES", "LPIPS_BACKBONES", "LPIPS_POOLINGS", "LPIPSUnavailableError", "load_lpips", "image_distance",
           "check_pooling", "with_pooling"]

#: the names `image_distance` knows
DISTANCES = ("l2", "lpips")
#: LPIPS backbones: lpips' name -> torchvision weights whose file lpips loads from torch's hub cache
LPIPS_BACKBONES = {
    "alex": "AlexNet_Weights.IMAGENET1K_V1",
    "vgg": "VGG16_Weights.IMAGENET1K_V1",
    "squeeze": "SqueezeNet1_1_Weights.IMAGENET1K_V1",
}
#: pooling of the LPIPS backbone: max (as published) | avg (VGG only, as piq's replace_pooling=True)
LPIPS_POOLINGS = ("max", "avg")


class LPIPSUnavailableError(UserError, RuntimeError):
    """LPIPS was asked for but the `lpips` package or its weights cannot be loaded on this machine."""


def image_distance(
    x: Tensor,
    y: Tensor,
    distance: str = "l2",
    *,
    adapt_gray: bool = False,
    lpips_net: str = "vgg",
    lpips_resize: int | None = 224,
    lpips_pooling: str = "max",
) -> Tensor:
    """d(x, y) per sample, shape [B].

    ``"l2"``: mean over pixels of (x - y)^2. ``"lpips"``: the `lpips` package's distance with
    backbone ``lpips_net`` and its pooling ``lpips_pooling`` ("max" or "avg", see the module
    docstring) on images in [-1, 1] (its own input range), both first resized
    bilinearly to ``lpips_resize`` x ``lpips_resize`` (None: as they are), because the ImageNet
    backbones cannot run on 8x8 or 32x32 inputs. LPIPS needs RGB: a 1-channel image is repeated
    to 3 channels only when ``adapt_gray=True`` (a change of metric the caller must opt into).
    Gradients flow to both images; pass a target without graph where it is a stop-gradient.
    """
    if x.shape != y.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but y {tuple(y.shape)}")
    if distance == "l2":
        return ((x - y) ** 2).flatten(1).mean(dim=1)
    if distance != "lpips":
        raise ValueError(f"unknown distance {distance!r}; expected one of {', '.join(map(repr, DISTANCES))}")

    # Shape errors first: they are the caller's to fix whether or not lpips is installed.
    channels = x.shape[1]
    if channels == 1:
        if not adapt_gray:
            raise ValueError("LPIPS needs 3-channel images; set adapt_gray=True to repeat a 1-channel image to RGB")
        x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
    elif channels != 3:
        raise ValueError(f"LPIPS needs 1- or 3-channel images, got {channels} channels")
    model = load_lpips(lpips_net, x.device, lpips_pooling)
    x, y = x.float(), y.float()  # the network is float32
    if lpips_resize is not None and x.shape[-2:] != (lpips_resize, lpips_resize):
        size = (lpips_resize, lpips_resize)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    return model(x, y).reshape(x.shape[0])


def load_lpips(net: str = "vgg", device: torch.device | str = "cpu", pooling: str = "max") -> nn.Module:
    """The `lpips` package's LPIPS(net) with ``pooling`` (`with_pooling`) on ``device``, frozen and
    loaded once per (net, device, pooling); `LPIPSUnavailableError` (one line) when the package or
    a weight file is missing."""
    return _load_lpips(net, str(torch.device(device)), pooling)


def check_pooling(net: str, pooling: str) -> None:
    """ValueError unless ``pooling`` is one of `LPIPS_POOLINGS` and defined for backbone ``net``."""
    if pooling not in LPIPS_POOLINGS:
        raise ValueError(f"unknown LPIPS pooling {pooling!r}; expected one of {', '.join(LPIPS_POOLINGS)}")
    if pooling == "avg" and net != "vgg":
        raise ValueError(f"LPIPS pooling 'avg' is defined for the vgg backbone only (piq's replace_pooling), not {net!r}")


def with_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """``model`` (an lpips.LPIPS with the VGG backbone for "avg") with its backbone's pooling:
    "max" leaves it as published; "avg" replaces each 2x2 stride-2 max pooling of the backbone
    (``model.net``) by a 2x2 stride-2 average pooling, in place. Returns ``model``."""
    if pooling not in LPIPS_POOLINGS:
        raise ValueError(f"unknown LPIPS pooling {pooling!r}; expected one of {', '.join(LPIPS_POOLINGS)}")
    if pooling == "avg":
        _average_pooling_(model.net)
    return model


def _average_pooling_(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.MaxPool2d):
            shape = tuple(_pair(v) for v in (child.kernel_size, child.stride, child.padding, child.dilation))
            if shape != ((2, 2), (2, 2), (0, 0), (1, 1)) or child.ceil_mode:
                raise ValueError(f"average pooling replaces 2x2 stride-2 max pooling only, got {child}")
            setattr(module, name, nn.AvgPool2d(kernel_size=2, stride=2, padding=0))
        else:
            _average_pooling_(child)


@functools.lru_cache(maxsize=None)
def _load_lpips(net: str, device: str, pooling: str = "max") -> nn.Module:
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"unknown LPIPS backbone {net!r}; expected one of {sorted(LPIPS_BACKBONES)}")
    check_pooling(net, pooling)
    try:
        import lpips  # an optional dependency: only the LPIPS distance needs it
    except ImportError as e:
        raise LPIPSUnavailableError(
            "distance='lpips' needs the `lpips` package (pip install lpips); use distance='l2'") from e

    # lpips ships its linear layers in the package; the backbone comes from torch's hub cache,
    # and this machine may have no network: check the files instead of letting torchvision try.
    linear = Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"
    if not linear.is_file():
        raise LPIPSUnavailableError(f"LPIPS linear weights missing: {linear} (reinstall the `lpips` package)")
    from torchvision.models import get_weight

    weights_name = LPIPS_BACKBONES[net]
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / Path(get_weight(weights_name).url).name
    if not backbone.is_file():
        raise LPIPSUnavailableError(
            f"LPIPS backbone weights not found offline: put torchvision's {weights_name} file at {backbone}")
    try:
        model = lpips.LPIPS(net=net, verbose=False)
    except Exception as e:  # noqa: BLE001 - a present but unreadable file fails in many ways; report them alike
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LPIPSUnavailableError(f"LPIPS weights for net={net!r} could not be loaded ({reason})") from e
    model = with_pooling(model, pooling)
    return model.to(device).eval().requires_grad_(False)  # a fixed metric: gradients reach the images only
