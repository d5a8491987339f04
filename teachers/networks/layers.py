"""Building blocks of the EDM networks (Karras et al. 2022): layers whose parameter and buffer
names match the published checkpoints, so their weights load with ``strict=True``.

Every layer casts its weights to the dtype of its input, so a network kept in float32 can run on
float16 inputs (EDM's ``use_fp16``) or inside an ``torch.autocast`` region without converting it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "weight_init",
    "Linear",
    "Conv2d",
    "GroupNorm",
    "attention",
    "PositionalEmbedding",
    "FourierEmbedding",
    "UNetBlock",
]


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int, gain: float = 1.0) -> Tensor:
    """A random tensor with the variance of one of EDM's four initialisers, times ``gain``.

    Drawn in place into an empty tensor; on the meta device (shapes only) nothing is drawn, which
    keeps building the full-size networks there instant. The distributions are symmetric, so
    only ``|gain|`` matters (0 gives zeros: EDM's zero-initialised output layers).
    """
    if mode not in ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"):
        raise ValueError(f"unknown init_mode {mode!r}")
    t = torch.empty(*shape)
    if t.is_meta:
        return t
    if mode == "xavier_uniform":
        bound = math.sqrt(6 / (fan_in + fan_out))
    elif mode == "kaiming_uniform":
        bound = math.sqrt(3 / fan_in)
    elif mode == "xavier_normal":
        return t.normal_(0, abs(gain) * math.sqrt(2 / (fan_in + fan_out)))
    else:  # kaiming_normal
        return t.normal_(0, abs(gain) * math.sqrt(1 / fan_in))
    return t.uniform_(-abs(gain) * bound, abs(gain) * bound)


def _cast(t: Tensor | None, like: Tensor) -> Tensor | None:
    return None if t is None else t.to(like.dtype)


class Linear(nn.Module):
    """Fully connected layer: ``weight`` [out, in], optional ``bias`` [out]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans, gain=init_weight))
        self.bias = nn.Parameter(weight_init([out_features], **fans, gain=init_bias)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), _cast(self.bias, x))


class Conv2d(nn.Module):
    """Square 2-D convolution ('same' padding) with optional 2x up- or down-sampling.

    Resampling uses the separable FIR filter ``resample_filter`` (stored, as in EDM, as a
    normalised [1, 1, k, k] buffer; [1, 1] gives nearest-neighbour up / box down). ``kernel=0``
    makes a weightless layer that only resamples. ``fused_resample`` changes the order for a
    down-sampling conv (convolve, then filter with stride 2) and for an up-sampling one
    (filter with stride 2, then convolve, padding shared): EDM's residual encoder uses the former.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ) -> None:
        if up and down:
            raise ValueError("Conv2d cannot both up- and down-sample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(weight_init(shape, **fans, gain=init_weight)) if kernel else None
        self.bias = nn.Parameter(weight_init([out_channels], **fans, gain=init_bias)) if kernel and bias else None
        f = None
        if up or down:  # separable 2-D filter with unit DC gain, as a [1, 1, k, k] buffer
            taps = [float(v) for v in resample_filter]
            norm = sum(taps) ** 2
            f = torch.tensor([[a * b / norm for b in taps] for a in taps], dtype=torch.float32)[None, None]
        self.register_buffer("resample_filter", f)

    # Depthwise resampling: each channel filtered by the same 2-D filter, stride 2.
    @staticmethod
    def _upsample(x: Tensor, f: Tensor, padding: int) -> Tensor:
        c = x.shape[1]
        return F.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=padding)

    @staticmethod
    def _downsample(x: Tensor, f: Tensor, padding: int) -> Tensor:
        c = x.shape[1]
        return F.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        w, b, f = _cast(self.weight, x), _cast(self.bias, x), _cast(self.resample_filter, x)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

        if self.fused_resample and self.up and w is not None:
            x = self._upsample(x, f, padding=max(f_pad - w_pad, 0))
            return F.conv2d(x, w, b, padding=max(w_pad - f_pad, 0))
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._downsample(x, f, padding=0)
            return x if b is None else x + b.reshape(1, -1, 1, 1)

        if self.up:
            x = self._upsample(x, f, padding=f_pad)
        if self.down:
            x = self._downsample(x, f, padding=f_pad)
        if w is not None:
            return F.conv2d(x, w, b, padding=w_pad)
        return x  # kernel=0 carries no bias


class GroupNorm(nn.Module):
    """Group normalisation with ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(
        self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Dot-product attention on [N, C, L] tensors (channels first, L = H*W positions).

    Weights are ``softmax over keys of q.k / sqrt(C)``; logits and softmax are computed in
    float32 even under autocast, because fp16 logits overflow at these channel counts.
    """
    device = q.device.type
    no_autocast = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()
    with no_autocast:
        logits = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(q.shape[1])).float())
        w = logits.softmax(dim=2).to(v.dtype)
    return torch.einsum("nqk,nck->ncq", w, v)


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar per sample: [cos(x f), sin(x f)],
    ``f_j = (1/max_positions) ** (j / (C/2 - endpoint))``, j = 0..C/2-1."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi x f), sin(2 pi x f)] with ``f ~ N(0, scale^2)`` (buffer ``freqs``)."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        freqs = torch.empty(num_channels // 2)
        self.register_buffer("freqs", freqs if freqs.is_meta else freqs.normal_(0, scale))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block of both UNets, optionally resampling and optionally followed by self-attention.

    conditioning: ``adaptive_scale=True`` applies ``norm1(h) * (1 + scale) + shift`` from the
    embedding (ADM); ``False`` adds the embedding before ``norm1`` (DDPM++).
    Attention heads: ``num_heads`` if given, else ``out_channels // channels_per_head``; zero heads
    (attention off, or too few channels) means no attention layers at all.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict | None = None,
        init_zero: dict | None = None,
        init_attn: dict | None = None,
    ) -> None:
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            # A 1x1 projection when channels change (or always, with resample_proj); else only resample.
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1,
                              **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))

        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))

        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale

        if self.num_heads:
            n, c, h, w = x.shape
            # qkv channels are interleaved per head as (C/heads, 3): split after the reshape.
            qkv = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, h * w)
            q, k, v = qkv.unbind(2)
            a = attention(q, k, v).reshape(n, c, h, w)
            x = (self.proj(a) + x) * self.skip_scale
        return x
