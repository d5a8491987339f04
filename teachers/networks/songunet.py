"""SongUNet: the DDPM++ / NCSN++ architecture (Song et al. 2021) in EDM's layout.

Module names (``map_*``, ``enc.{res}x{res}_*``, ``dec.{res}x{res}_*``) follow EDM's checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock

__all__ = ["SongUNet"]


class SongUNet(nn.Module):
    """DDPM++ (``embedding_type='positional'``, standard encoder/decoder) or NCSN++ (Fourier
    embedding, ``encoder_type='residual'``, ``decoder_type='skip'``).

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
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"unknown embedding_type {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"unknown encoder_type {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"unknown decoder_type {decoder_type!r}")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn,
        )

        # Mapping network: noise level (+ class, + augmentation) -> embedding.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder. `aux` is the image-resolution side path of the skip / residual encoders.
        self.enc = nn.ModuleDict()
        cout, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, kernel=3, **init)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, kernel=3, down=True, resample_filter=resample_filter,
                        fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(res in attn_resolutions), **block)
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        # Decoder: two middle blocks at the lowest resolution, then per level an up block and
        # num_blocks+1 blocks that each consume one encoder skip.
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
                    cin, cout, attention=(idx == num_blocks and res in attn_resolutions), **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None) -> Tensor:
        """The conditioning vector [B, emb_channels] shared by all blocks."""
        emb = self.map_noise(noise_labels)
        cos, sin = emb.chunk(2, dim=1)
        emb = torch.cat([sin, cos], dim=1)  # NCSN++ convention: [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if labels is None:
                labels = torch.zeros([emb.shape[0], self.label_dim], device=emb.device, dtype=emb.dtype)
            if self.training and self.label_dropout:
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            # Scaling the one-hot vector keeps the label term at unit variance.
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

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
        aux = x
        for name, m in self.enc.items():
            if "aux_down" in name:
                aux = m(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + m(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + m(aux)) / math.sqrt(2)
            else:
                x = m(x, emb) if isinstance(m, UNetBlock) else m(x)
                skips.append(x)
        bottleneck = x
        if decode_first is not None:  # the other samples stop at the encoder (their bottleneck only)
            x, emb, skips = x[:decode_first], emb[:decode_first], [s[:decode_first] for s in skips]

        out = None  # running sum of the image-space outputs (skip decoder) or the final output
        for name, m in self.dec.items():
            if "aux_up" in name:
                out = m(out)
            elif "aux_norm" in name:
                h = m(x)
            elif "aux_conv" in name:
                h = m(F.silu(h))
                out = h if out is None else h + out
            else:
                if "_block" in name:  # every decoder block takes one encoder skip
                    x = torch.cat([x, skips.pop()], dim=1)
                x = m(x, emb)
        return (out, bottleneck) if return_bottleneck else out
