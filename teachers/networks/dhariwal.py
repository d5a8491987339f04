"""DhariwalUNet: the ADM architecture (Dhariwal & Nichol 2021) in EDM's layout."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock

__all__ = ["DhariwalUNet"]


class DhariwalUNet(nn.Module):
    """ADM UNet: scale/shift conditioning, attention with 64 channels per head, no skip scaling.

    ``forward(x, noise_labels [B], class_labels [B, label_dim] | None, augment_labels | None)``
    returns F(x); with ``return_bottleneck=True`` also the encoder's lowest-resolution features.
    ``decode_first=k`` runs the decoder on the first k samples only (F(x) has k rows, the
    bottleneck all of them): a caller that needs only the encoder's output of the others saves
    the decoder's cost on them.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout,
                     init=init, init_zero=init_zero)

        # Mapping network (registration order matches the checkpoints: map_label comes last).
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (
            Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(label_dim))
            if label_dim else None
        )

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels * mult, kernel=3, **init)
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(res in attn_resolutions), **block)
        skips = [m.out_channels for m in self.enc.values()]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(res in attn_resolutions), **block)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None) -> Tensor:
        """The conditioning vector [B, emb_channels] shared by all blocks."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if labels is None:
                labels = torch.zeros([emb.shape[0], self.label_dim], device=emb.device, dtype=emb.dtype)
            if self.training and self.label_dropout:
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)  # added after map_layer1, before the activation
        return F.silu(emb)

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        return_bottleneck: bool = False,
        decode_first: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        emb = self.embed(noise_labels, class_labels, augment_labels)

        skips: list[Tensor] = []
        for m in self.enc.values():
            x = m(x, emb) if isinstance(m, UNetBlock) else m(x)
            skips.append(x)
        bottleneck = x
        if decode_first is not None:  # the other samples stop at the encoder (their bottleneck only)
            x, emb, skips = x[:decode_first], emb[:decode_first], [s[:decode_first] for s in skips]

        for name, m in self.dec.items():
            if "_block" in name:  # every decoder block takes one encoder skip
                x = torch.cat([x, skips.pop()], dim=1)
            x = m(x, emb)
        out = self.out_conv(F.silu(self.out_norm(x)))
        return (out, bottleneck) if return_bottleneck else out
