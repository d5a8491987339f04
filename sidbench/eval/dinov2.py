"""DINOv2 ViT-L/14 features as EDM2 measures FD-DINOv2 (docs/metrics.md#fd-dinov2).

EDM2 (Karras et al. 2024, arXiv 2312.02696; its `calculate_metrics.py`) takes the features of
Stein et al. 2023 (arXiv 2306.04675): the DINOv2 ViT-L/14 backbone (Oquab et al. 2023, arXiv
2304.07193) on uint8 RGB images resized to 224x224 with torch's antialiased bicubic filter on float
pixels, scaled to 0..1 and normalised with ImageNet's mean and std; the feature is the backbone's
output, the final LayerNorm of the class token (1024 values).

EDM2 loads the backbone with `torch.hub`, which downloads and runs the DINOv2 repository's Python
code. sidbench does not: `DINOv2ViT` below is the same network written here, with the parameter
names of the published checkpoint (`dinov2_vitl14_pretrain.pth`, a state dict of tensors), loaded
with `torch.load(weights_only=True)`. Its shapes are read from the checkpoint, so a tiny random
network with the same layout (the tests') runs through exactly the code path of the real one.

What the published backbone does that matters for the features, and is reproduced here: pre-norm
blocks with LayerNorm eps 1e-6, multi-head attention of 64 values a head, GELU MLP, per-channel
layer scale on both residual branches; the 37x37 grid of position embeddings (trained at 518x518)
resampled to the input's 16x16 grid by bicubic interpolation without antialiasing, at the scale
factor (16 + 0.1) / 37 (the repository's offset that avoids a rounding error in the output size).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sidbench.eval.weights import WeightsFile, detector_weights, load_state_dict

#: The published backbone (the file torch.hub fetches for `dinov2_vitl14`).
DINOV2_WEIGHTS = WeightsFile(
    what="DINOv2 ViT-L/14 weights",
    url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
    filename="dinov2_vitl14_pretrain.pth",
    sha256=None,  # not recorded here: the first download's digest is printed and kept (sidbench.eval.weights)
    env="SIDBENCH_DINOV2",
    setting="eval.dinov2_path",
)
#: EDM2's input size and normalisation.
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Values per attention head in every DINOv2 ViT (S/14: 384 / 6, B/14: 768 / 12, L/14: 1024 / 16).
HEAD_DIM = 64
#: The DINOv2 repository's offset to the output grid when resampling position embeddings.
POS_OFFSET = 0.1
#: Images per forward pass of a feature network (at 224x224).
CHUNK = 64


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DINOv2ViT(nn.Module):
    """The DINOv2 backbone without registers; `forward` gives the normalised class token [B, dim].

    The defaults are ViT-L/14 as published (1024 wide, 24 blocks, 16 heads, MLP 4096, patch 14,
    position embeddings for a 37x37 grid). `mask_token` is unused at inference but part of the
    checkpoint, which is loaded strictly."""

    def __init__(self, dim: int = 1024, depth: int = 24, heads: int = 16, hidden: int = 4096, patch: int = 14,
                 grid: int = 37) -> None:
        super().__init__()
        self.patch = patch
        self.grid = grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = _PatchEmbed(dim, patch)
        self.blocks = nn.ModuleList(_Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> DINOv2ViT:
        """The network a checkpoint describes (its widths, depth, patch and grid read from the
        tensors' shapes; HEAD_DIM values a head), with the checkpoint loaded strictly."""
        try:
            dim = state["cls_token"].shape[-1]
            depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
            hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
            patch = state["patch_embed.proj.weight"].shape[-1]
            grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        except (KeyError, IndexError) as err:
            raise ValueError(f"not a DINOv2 ViT checkpoint (no {err})") from None
        net = cls(dim, depth, max(dim // HEAD_DIM, 1), hidden, patch, grid)
        net.load_state_dict(state, strict=True)
        return net

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The position embeddings for an input of `height` x `width` pixels: the trained grid
        resampled as the DINOv2 repository resamples it (see the module docstring)."""
        rows, cols = height // self.patch, width // self.patch
        if rows == cols == self.grid:
            return self.pos_embed
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        scale = ((rows + POS_OFFSET) / self.grid, (cols + POS_OFFSET) / self.grid)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        if tuple(grid.shape[-2:]) != (rows, cols):
            raise ValueError(f"position embeddings resampled to {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([pos[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """EDM2's input to the backbone: uint8 [B, 3, H, W] -> float [B, 3, 224, 224], resized with
    antialiased bicubic on float pixels 0..255 (no rounding), scaled to 0..1, ImageNet-normalised."""
    x = F.interpolate(images.to(torch.float32), size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


class DINOv2Extractor:
    """uint8 images [B, 3, H, W] -> DINOv2 features [B, dim] (float64 numpy), as EDM2 computes them."""

    def __init__(self, net: DINOv2ViT, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> DINOv2Extractor:
        state = load_state_dict(path, DINOV2_WEIGHTS)
        try:
            net = DINOv2ViT.from_state_dict(state)
        except (ValueError, RuntimeError) as err:
            from sidbench.errors import InputError

            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InputError(f"{path} is not the DINOv2 ViT-L/14 checkpoint ({first}); fetch {DINOV2_WEIGHTS.url}") from None
        return cls(net, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {list(images.shape)}")
        # at most CHUNK images at a time: an evaluation batch (500) of 224x224 inputs would not fit every GPU
        return torch.cat([self.net(preprocess(x.to(self.device))).double().cpu() for x in images.split(CHUNK)]).numpy()


def dinov2_extractor(weights_path: str | os.PathLike | None = None, *, device: torch.device | str | None = None,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True) -> DINOv2Extractor:
    """The DINOv2 extractor from local weights (`weights_path`, `$SIDBENCH_DINOV2` or the cache)."""
    from sidbench.eval.fid import default_device

    path = detector_weights(DINOV2_WEIGHTS, weights_path, cache_dir=cache_dir, progress=progress)
    return DINOv2Extractor.from_file(path, device if device is not None else default_device())
