"""DMD2's GAN head on the fake score's bottleneck (DMD2: arXiv 2405.14867), for any EDM network.

The fake score's encoder output (its lowest-resolution features, from
`net(x, sigma, labels, return_bottleneck=True)`) goes through a small conv stack to one realism
logit per image; the head and the fake score's encoder are trained together by the GAN loss.
"""
from __future__ import annotations

import torch
from torch import nn


def _num_groups(channels: int) -> int:
    """GroupNorm groups: 32 when that leaves >= 4 channels a group, else the largest divisor of
    `channels` <= channels // 4. The last GroupNorm sees a 1x1 map, so its statistics come from the
    channels of a group alone: one channel a group would normalise every logit feature to its bias."""
    groups = min(32, channels // 4)
    while channels % groups:
        groups -= 1
    return groups


class GANHead(nn.Module):
    """Bottleneck features [B, C, R, R] -> one logit per image [B]; a pure function of (C, R).

    Layers (hidden width = C, the input width, as in the authors' ImageNet head):
      1. conv 4x4 stride 2 pad 1 (R -> R/2) -> GroupNorm -> SiLU, repeated while the map is
         larger than 4x4, and at least once;
      2. conv r x r stride r pad 0 (r = the map size left: 4, 2 or 1; r -> 1) -> GroupNorm -> SiLU;
      3. conv 1x1 to one channel.
    For R = 8 this is exactly the published head (8 -> 4 -> 1, GroupNorm(32)); for the digits'
    and the tiny test teacher's 4x4 bottleneck it is 4 -> 2 -> 1, keeping the published depth of two
    normalised hidden layers; for 16x16 it is 16 -> 8 -> 4 -> 1. GroupNorm groups: `_num_groups(C)`
    (32 for C = 768 or 256, 8 for C = 32, 4 for C = 16). R must be a power of two >= 2 and C >= 4.
    """

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        if resolution < 2 or resolution & (resolution - 1):
            raise ValueError(f"GAN head: bottleneck resolution must be a power of two >= 2, got {resolution}")
        if channels < 4:
            raise ValueError(f"GAN head: bottleneck needs at least 4 channels for GroupNorm, got {channels}")
        self.channels, self.resolution = channels, resolution
        groups = _num_groups(channels)

        layers: list[nn.Module] = []
        size = resolution
        while size > 4 or size == resolution:  # halve down to 4x4, and at least once
            layers += [nn.Conv2d(channels, channels, kernel_size=4, stride=2, padding=1),
                       nn.GroupNorm(groups, channels), nn.SiLU()]
            size //= 2
        layers += [nn.Conv2d(channels, channels, kernel_size=size, stride=size, padding=0),
                   nn.GroupNorm(groups, channels), nn.SiLU(),
                   nn.Conv2d(channels, 1, kernel_size=1)]
        self.layers = nn.Sequential(*layers)

    @classmethod
    def for_bottleneck(cls, channels: int, resolution: int) -> GANHead:
        """The head for a [B, channels, resolution, resolution] bottleneck."""
        return cls(channels, resolution)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        expected = (self.channels, self.resolution, self.resolution)
        if features.ndim != 4 or tuple(features.shape[1:]) != expected:
            c, h, w = expected
            raise ValueError(f"GAN head built for [B, {c}, {h}, {w}] features, got {list(features.shape)}")
        # the bottleneck comes in the network's dtype (fp16 on CUDA for use_fp16 nets): the head runs
        # in its own dtype, as the authors cast the features to float32
        logits = self.layers(features.to(self.layers[0].weight.dtype))
        return logits.reshape(features.shape[0])


def bottleneck_shape(net: nn.Module, img_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) of `net`'s bottleneck for images of shape `img_shape` = (channels, height, width).

    Runs one no-grad forward of a single zero image at sigma = 1 (labels None: zeros) on the
    network's device; on a `meta`-device network this costs nothing but shape propagation.
    """
    param = next(net.parameters())
    x = torch.zeros(1, *img_shape, device=param.device)
    with torch.no_grad():
        _, features = net(x, torch.ones(1, device=param.device), None, return_bottleneck=True)
    c, h, w = features.shape[1:]
    return int(c), int(h), int(w)
