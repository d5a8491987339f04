"""VGG16 features for precision and recall (docs/metrics.md#precision-and-recall).

Kynkaanniemi et al. 2019 (arXiv 1904.06991) embed images with an ImageNet-trained VGG16 and take the
4096 activations of its second fully connected layer (fc2, after its ReLU). Their code and
StyleGAN2-ADA's (`metrics/precision_recall.py`) use NVIDIA's VGG16 as a TorchScript file
(`vgg16.pt`), a serialized program that `torch.jit.load` runs, with its own resizing inside. sidbench
runs no downloaded program, so it builds the VGG16 layout here and loads torchvision's
IMAGENET1K_V1 weights (`vgg16-397923af.pth`, a state dict of tensors) with
`torch.load(weights_only=True)`. Those are other weights than NVIDIA's file holds (PyTorch's own
ImageNet training, with its input normalisation), so the features, and precision and recall,
differ from numbers measured with `vgg16.pt`: compare them only with each other.

Input: uint8 RGB [B, 3, H, W] resized to 224x224 with antialiased bicubic on float pixels (as the
DINOv2 features, `sidbench.eval.dinov2.preprocess`), scaled to 0..1 and normalised with ImageNet's
mean and std (what the torchvision weights were trained with).

`VGGFeatures.from_state_dict` reads the layout from the checkpoint (a convolution at each
`features.<i>` that has weights, its ReLU after it, a 2x2 max-pool at every other index; the
pooled size before the classifier from the first linear layer's width), so a tiny VGG-shaped
network (the tests') goes through the code path of the real one.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sidbench.eval.dinov2 import CHUNK, IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE
from sidbench.eval.weights import WeightsFile, detector_weights, load_state_dict

#: torchvision's VGG16 IMAGENET1K_V1 weights. The name carries the SHA-256's first digits (torchvision
#: checks those); the full digest is the one several public projects record for this file.
VGG16_WEIGHTS = WeightsFile(
    what="VGG16 weights (torchvision IMAGENET1K_V1)",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    filename="vgg16-397923af.pth",
    sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    env="SIDBENCH_VGG16",
    setting="eval.vgg16_path",
    sha256_prefix="397923af",
)


class VGGFeatures(nn.Module):
    """VGG's convolutions, average pool and first two linear layers; `forward` gives fc2 after its
    ReLU. The class scores (`classifier.6`) are kept so the checkpoint loads strictly, never run."""

    def __init__(self, convs: dict[int, tuple[int, int]], length: int, pooled: int, fc1: tuple[int, int],
                 fc2: tuple[int, int], classes: int | None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(length):
            if i in convs:
                layers.append(nn.Conv2d(convs[i][0], convs[i][1], kernel_size=3, padding=1))
            elif i - 1 in convs:
                layers.append(nn.ReLU())
            else:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        head: list[nn.Module] = [nn.Linear(*fc1), nn.ReLU(), nn.Dropout(), nn.Linear(*fc2), nn.ReLU(), nn.Dropout()]
        if classes is not None:
            head.append(nn.Linear(fc2[1], classes))
        self.classifier = nn.Sequential(*head)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> VGGFeatures:
        try:
            convs = {int(k.split(".")[1]): (v.shape[1], v.shape[0]) for k, v in state.items()
                     if k.startswith("features.") and k.endswith(".weight")}
            last = max(convs)
            # VGG ends its convolutions with ReLU and max-pool: the layout's length is last conv + 3
            fc1, fc2 = state["classifier.0.weight"], state["classifier.3.weight"]
            pooled = math.isqrt(fc1.shape[1] // convs[last][1])
            classes = state["classifier.6.weight"].shape[0] if "classifier.6.weight" in state else None
        except (KeyError, ValueError, IndexError) as err:
            raise ValueError(f"not a VGG checkpoint ({type(err).__name__}: {err})") from None
        net = cls(convs, last + 3, pooled, (fc1.shape[1], fc1.shape[0]), (fc2.shape[1], fc2.shape[0]), classes)
        net.load_state_dict(state, strict=True)
        return net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:5](x)  # fc1, ReLU, dropout (off in eval), fc2, ReLU


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, 224, 224]: antialiased bicubic on float pixels, 0..1, ImageNet-normalised."""
    x = F.interpolate(images.to(torch.float32), size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


class VGGExtractor:
    """uint8 images [B, 3, H, W] -> VGG16 fc2 features [B, 4096] (float32 tensor on the CPU)."""

    def __init__(self, net: VGGFeatures, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> VGGExtractor:
        state = load_state_dict(path, VGG16_WEIGHTS)
        try:
            net = VGGFeatures.from_state_dict(state)
        except (ValueError, RuntimeError) as err:
            from sidbench.errors import InputError

            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InputError(f"{path} is not a VGG16 checkpoint ({first}); fetch {VGG16_WEIGHTS.url}") from None
        return cls(net, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {list(images.shape)}")
        # at most CHUNK images at a time: an evaluation batch (500) of 224x224 inputs would not fit every GPU
        return torch.cat([self.net(preprocess(x.to(self.device))).float().cpu() for x in images.split(CHUNK)]).numpy()


def vgg16_extractor(weights_path: str | os.PathLike | None = None, *, device: torch.device | str | None = None,
                    cache_dir: str | os.PathLike | None = None, progress: bool = True) -> VGGExtractor:
    """The VGG16 extractor from local weights (`weights_path`, `$SIDBENCH_VGG16` or the cache)."""
    from sidbench.eval.fid import default_device

    path = detector_weights(VGG16_WEIGHTS, weights_path, cache_dir=cache_dir, progress=progress)
    return VGGExtractor.from_file(path, device if device is not None else default_device())
