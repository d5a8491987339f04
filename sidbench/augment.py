"""EDM's non-leaking geometric augmentation pipe, as used by SiD's fake-score update
(docs/sid.md#augmentation).

Per sample, six transforms are drawn independently; transform ``k`` happens with probability
``min(p * multiplier_k, 1)``. The published SiD setting is ``xflip=1e8, yflip=1, scale=1,
rotate_frac=1, aniso=1, translate_frac=1``: x-flip is always eligible (so half the images are
mirrored) and the other five happen with probability ``p`` each. Every call returns the images and
a float32 label ``[N, 9]`` that describes what was done, for the network's ``map_augment`` input:

====  =================  ==========================================================  ============
slot  transform          parameter                                                   not applied
====  =================  ==========================================================  ============
0     x-flip             ``w`` in {0, 1} uniform; label ``w``                        0
1     y-flip             ``w`` in {0, 1} uniform; label ``w``                        0
2     isotropic scale    ``w ~ N(0, 1)``, factor ``2^(scale_std w)``; label ``w``    0
3, 4  rotation           ``w ~ U(-pi, pi)``; labels ``cos w - 1``, ``sin w``         0, 0
5, 6  anisotropic scale  ``w ~ N(0, 1)``, factor ``2^(aniso_std w)`` along the axis  0, 0
                         at angle ``r`` and its inverse across it; ``r ~ U(-pi, pi)``
                         with probability 0.5, else 0; labels ``w cos r``, ``w sin r``
7, 8  translation        ``(wx, wy) ~ N(0, 1)^2``, shift ``(0.125 W wx, 0.125 H wy)``  0, 0
                         pixels; labels ``wx``, ``wy``
====  =================  ==========================================================  ============

Geometry. Coordinates are pixels about the image centre, ``x`` to the right (columns) and ``y``
down (rows). The flips come first and are done by ``torch.flip`` (exact pixels), as EDM does them
("pixel blitting"); the four other transforms then compose into one affine map, applied in the
order scale, rotation, anisotropic scale, translation:

* scale ``s``: content grows by ``s`` about the centre;
* rotation ``w``: a point at ``(x, y)`` moves to ``(x cos w + y sin w, -x sin w + y cos w)``,
  i.e. counter-clockwise by ``w`` as the image is displayed (y down);
* anisotropic scale: stretch by ``s`` along the unit vector ``(cos r, -sin r)`` and by ``1/s``
  across it (``r`` is also counted counter-clockwise as displayed);
* translation: content moves ``0.125 W wx`` pixels right and ``0.125 H wy`` pixels down.

This is EDM's matrix exactly: its inverse map (output to input coordinates) is
``S^-1 R(w) [R(-r) diag(1/s, s) R(r)] T^-1`` with ``R(t) = [[cos t, -sin t], [sin t, cos t]]``;
``inverse_map`` builds it from the drawn values. The label does not quite determine the map:
``(w, r)`` and ``(-w, r + pi)`` give the same anisotropic labels but a stretch and a squeeze of the
same axis. That is EDM's label, kept as it is, because the teachers were trained on it.

Resampling (SiD's `method.augment_resample`). Only the samples whose affine map is not the identity are
resampled; identity and pure-flip samples are returned exactly. Two resamplers are provided:

* ``resample="sym6"`` (the default): EDM's scheme. Reflection-pad the image (reflection about the
  edge pixels' centres, like ``numpy.pad(mode="reflect")``), upsample 2x with the ``sym6`` wavelet
  low-pass filter, take a bilinear sample of the affine map at twice the resolution, filter with the
  same ``sym6`` filter and decimate 2x, with EDM's pixel conventions (input pixel k at fine
  position 2k, output pixel q gathered around fine position 2q). The padding and the filters are
  applied as matrix products along each axis. The filter pair reconstructs perfectly, so the
  identity and integer translations move pixels exactly (up to float rounding). Two properties
  inherited from EDM: the sym6 filter is not symmetric (its centroid is tap 5.098, not 5), so the
  content sits ``delta = 0.049`` pixel along +x and +y from where the convention puts it; the
  shift cancels for translations, and a map with linear part ``A`` lands content ``(A - I) delta``
  off: about 0.14 pixel for a half turn, a little more with scaling. And a quarter turn is not an
  exact pixel permutation.
  One difference: the padding here is as wide as the map needs (EDM derives it from the image
  corners, caps it at ``W - 1`` and reads zeros beyond), so reflection holds for every map;
  away from the border the result should match EDM's up to float rounding.
* ``resample="bilinear"``: one bilinear sample at the native resolution
  (``grid_sample(mode="bilinear", align_corners=True)`` on coordinates folded back into the image
  by the same reflection about the edge pixels' centres). Cheaper (about 4-7x on CPU) and a little
  blurrier, with no sub-pixel offset; docs/sid.md#augmentation names it as a close approximation.

Both resample in float32 and return the input's dtype. Randomness comes from torch's RNG, or from
``generator=`` (draws happen on the generator's device and are then moved to the images' device),
so a seeded run is reproducible. The pipe is differentiable in the images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

AUGMENT_DIM = 9
"""Width of the augmentation label (the networks' ``augment_dim``)."""

RESAMPLERS = ("sym6", "bilinear")

# Low-pass decomposition filter of the sym6 wavelet (12 taps, sum sqrt(2), orthonormal under even
# shifts; tests/test_augment.py checks these properties and its six vanishing moments).
SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)


def no_augment_labels(batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """All-zero labels [batch_size, 9] float32: what a network gets for an un-augmented input."""
    return torch.zeros(batch_size, AUGMENT_DIM, dtype=torch.float32, device=device)


# --------------------------------------------------------------------------------------------
# Affine maps (batched 3x3 homogeneous matrices acting on centred pixel coordinates (x, y, 1)).

def _eye(n: int, device) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float32, device=device).expand(n, 3, 3).clone()


def _rotation(t: torch.Tensor) -> torch.Tensor:
    m = _eye(t.shape[0], t.device)
    c, s = torch.cos(t), torch.sin(t)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _scaling(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = _eye(sx.shape[0], sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _translation(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = _eye(tx.shape[0], tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def inverse_map(
    height: int, width: int, *, scale_w: torch.Tensor, rotate_w: torch.Tensor,
    aniso_w: torch.Tensor, aniso_r: torch.Tensor, translate_wx: torch.Tensor,
    translate_wy: torch.Tensor, scale_std: float = 0.2, aniso_std: float = 0.2,
    translate_frac_std: float = 0.125,
) -> torch.Tensor:
    """The [N, 3, 3] map from output to input pixel coordinates (centred, x right, y down).

    Arguments are the drawn values per sample ([N] each, zero where a transform is not applied).
    """
    s = torch.exp2(scale_w * scale_std)
    a = torch.exp2(aniso_w * aniso_std)
    g = _scaling(1 / s, 1 / s)
    g = g @ _rotation(rotate_w)
    g = g @ _rotation(-aniso_r) @ _scaling(1 / a, a) @ _rotation(aniso_r)
    g = g @ _translation(-translate_wx * (width * translate_frac_std),
                         -translate_wy * (height * translate_frac_std))
    return g


# --------------------------------------------------------------------------------------------
# Resampling.

def _fold(x: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect coordinates (in pixel indices) into [0, n - 1] about the edge pixels' centres."""
    if n == 1:
        return torch.zeros_like(x)
    period = 2 * (n - 1)
    x = torch.remainder(x, period)
    return (n - 1) - ((n - 1) - x).abs()


def _reflect_index(lo: int, hi: int, n: int, device) -> torch.Tensor:
    """Indices lo..hi-1 (may be negative or >= n) reflected into 0..n-1 about the edge pixels."""
    i = torch.arange(lo, hi, device=device)
    if n == 1:
        return torch.zeros_like(i)
    i = torch.remainder(i, 2 * (n - 1))
    return (n - 1) - ((n - 1) - i).abs()


def _map_points(g_inv: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Apply g_inv [N,3,3] to the grid of centred points xs [w] x ys [h]: returns (x, y) [N, h, w, 2]."""
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(-1, 3)  # [h w, 3]
    out = pts @ g_inv[:, :2, :].transpose(1, 2)  # [N, h w, 2]
    return out.reshape(g_inv.shape[0], ys.numel(), xs.numel(), 2)


def _resample_bilinear(images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    n, _, h, w = images.shape
    dev = images.device
    cx, cy = (w - 1) / 2, (h - 1) / 2
    xs = torch.arange(w, device=dev, dtype=torch.float32) - cx
    ys = torch.arange(h, device=dev, dtype=torch.float32) - cy
    src = _map_points(g_inv, xs, ys)
    sx, sy = _fold(src[..., 0] + cx, w), _fold(src[..., 1] + cy, h)
    gx = sx * (2 / (w - 1)) - 1 if w > 1 else torch.zeros_like(sx)
    gy = sy * (2 / (h - 1)) - 1 if h > 1 else torch.zeros_like(sy)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _sym6_up_matrix(n: int, pad_lo: int, pad_hi: int, taps: torch.Tensor) -> torch.Tensor:
    """[2 (n + pad_lo + pad_hi), n]: reflection-pad an axis of n samples, then upsample it 2x.

    Upsampling of the padded signal p (length L): ``u[m] = sqrt(2) sum_k p[k] h[m + 5 - 2k]``
    (zeros beyond p), i.e. zero-stuffing and filtering with sym6. Padded sample k lands at fine
    position 2k (EDM's convention). The padding, ``p[k] = x[reflect(k - pad_lo)]``, is folded in.
    """
    length = n + pad_lo + pad_hi
    m = torch.arange(2 * length, device=taps.device)[:, None]
    k = torch.arange(length, device=taps.device)[None, :]
    j = m + 5 - 2 * k
    band = torch.where((j >= 0) & (j < taps.numel()), taps[j.clamp(0, taps.numel() - 1)], 0.0) * math.sqrt(2)
    up = torch.zeros(2 * length, n, dtype=taps.dtype, device=taps.device)
    return up.index_add_(1, _reflect_index(-pad_lo, n + pad_hi, n, taps.device), band)


def _sym6_down_matrix(n: int, border: int, taps: torch.Tensor) -> torch.Tensor:
    """[n, 2 (n + 2 border)]: filter a fine axis with sym6, decimate 2x and keep samples border..border+n-1.

    ``d[q] = sum_i h[i - 2q + 5] y[i] / sqrt(2)``: output q gathers around fine position 2q (EDM's
    convention). With the upsampler above it reconstructs perfectly (sym6 is orthonormal under
    even shifts).
    """
    q = torch.arange(border, border + n, device=taps.device)[:, None]
    i = torch.arange(2 * (n + 2 * border), device=taps.device)[None, :]
    j = i - 2 * q + 5
    return torch.where((j >= 0) & (j < taps.numel()), taps[j.clamp(0, taps.numel() - 1)], 0.0) / math.sqrt(2)


def _resample_sym6(images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    n, c, h, w = images.shape
    dev = images.device
    taps = torch.tensor(SYM6, dtype=torch.float32, device=dev)
    border = taps.numel() // 4  # 3 output pixels computed beyond each edge for the final filter
    cx, cy = (w - 1) / 2, (h - 1) / 2

    # The output is sampled on a fine grid covering `border` extra pixels on each side. Find the
    # source region that grid reaches, plus the filters' support, and reflection-pad to cover it.
    ex, ey = cx + border + 0.5, cy + border + 0.5
    corners = torch.tensor([[-ex, -ey, 1], [ex, -ey, 1], [ex, ey, 1], [-ex, ey, 1]],
                           dtype=torch.float32, device=dev)
    src = g_inv @ corners.T  # [N, 3, 4]
    lo = src[:, :2].amin(dim=(0, 2)).tolist()
    hi = src[:, :2].amax(dim=(0, 2)).tolist()
    support = 2 * border  # covers the sym6 filters (and bilinear's neighbour) around a source point
    limit = 8 * max(h, w)  # beyond this (only for absurd maps) the source reads as zeros
    mx0 = min(max(math.ceil(-lo[0] - cx + support), 0), limit)
    mx1 = min(max(math.ceil(hi[0] - cx + support), 0), limit)
    my0 = min(max(math.ceil(-lo[1] - cy + support), 0), limit)
    my1 = min(max(math.ceil(hi[1] - cy + support), 0), limit)

    # Pad and upsample 2x along each axis, as two matrix products: [N, C, 2 Hp, 2 Wp].
    up = _sym6_up_matrix(h, my0, my1, taps) @ (images @ _sym6_up_matrix(w, mx0, mx1, taps).T)
    hu, wu = up.shape[-2:]

    # Sample the map at twice the resolution. Fine pixel v stands for output position
    # o = v / 2 - border; the source point s it reads (in the image's pixel indices) sits at
    # 2 (s + margin) in the upsampled padded image.
    hy, wy = 2 * (h + 2 * border), 2 * (w + 2 * border)
    xs = torch.arange(wy, device=dev, dtype=torch.float32) / 2 - border - cx
    ys = torch.arange(hy, device=dev, dtype=torch.float32) / 2 - border - cy
    # In grid_sample's normalised coordinates (align_corners=False) fine position u is (2u + 1) / size - 1.
    size = torch.tensor([wu, hu], dtype=torch.float32, device=dev)
    origin = torch.tensor([cx + mx0, cy + my0], dtype=torch.float32, device=dev)
    grid = (4 * (_map_points(g_inv, xs, ys) + origin) + 1) / size - 1
    fine = F.grid_sample(up, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Filter, decimate 2x and crop the border, again as two matrix products: [N, C, H, W].
    return _sym6_down_matrix(h, border, taps) @ fine @ _sym6_down_matrix(w, border, taps).T


def resample_affine(images: torch.Tensor, g_inv: torch.Tensor, resample: str = "sym6") -> torch.Tensor:
    """Resample images [N, C, H, W] through the inverse maps g_inv [N, 3, 3] with reflection padding.

    ``g_inv`` takes an output pixel's centred coordinates (x right, y down) to the input point it
    reads. Computed in float32; returns the input's dtype.
    """
    if images.ndim != 4 or g_inv.shape != (images.shape[0], 3, 3):
        raise ValueError(f"need images [N,C,H,W] and g_inv [N,3,3], "
                         f"got {tuple(images.shape)}, {tuple(g_inv.shape)}")
    if resample not in RESAMPLERS:
        raise ValueError(f"resample must be one of {RESAMPLERS}, got {resample!r}")
    if images.shape[0] == 0:
        return images
    x = images.to(torch.float32)
    g = g_inv.to(device=images.device, dtype=torch.float32)
    out = _resample_sym6(x, g) if resample == "sym6" else _resample_bilinear(x, g)
    return out.to(images.dtype)


# --------------------------------------------------------------------------------------------
# The pipe.

@dataclass
class AugmentDraw:
    """One draw of the pipe's parameters for a batch (all on the images' device)."""

    xflip: torch.Tensor      # [N] bool: mirror left-right
    yflip: torch.Tensor      # [N] bool: mirror top-bottom
    geometric: torch.Tensor  # [N] bool: some non-flip transform applied (needs resampling)
    g_inv: torch.Tensor      # [N, 3, 3] float32: output -> input centred pixel coordinates
    labels: torch.Tensor     # [N, 9] float32


class AugmentPipe(torch.nn.Module):
    """EDM's non-leaking geometric augmentation: ``images [N,C,H,W] -> (images, labels [N, 9])``.

    ``p`` is the overall probability; each ``multiplier`` scales it per transform (0 disables the
    transform, whose label slots then stay 0). The defaults are the published SiD/EDM setting.
    ``p`` may be changed between calls (``pipe.p = 0.2``).
    """

    def __init__(
        self,
        p: float,
        *,
        xflip: float = 1e8,
        yflip: float = 1.0,
        scale: float = 1.0,
        rotate_frac: float = 1.0,
        aniso: float = 1.0,
        translate_frac: float = 1.0,
        scale_std: float = 0.2,
        rotate_frac_max: float = 1.0,
        aniso_std: float = 0.2,
        aniso_rotate_prob: float = 0.5,
        translate_frac_std: float = 0.125,
        resample: str = "sym6",
    ) -> None:
        super().__init__()
        values = dict(p=p, xflip=xflip, yflip=yflip, scale=scale, rotate_frac=rotate_frac, aniso=aniso,
                      translate_frac=translate_frac, scale_std=scale_std, rotate_frac_max=rotate_frac_max,
                      aniso_std=aniso_std, aniso_rotate_prob=aniso_rotate_prob,
                      translate_frac_std=translate_frac_std)
        for name, value in values.items():
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
            setattr(self, name, value)
        if resample not in RESAMPLERS:
            raise ValueError(f"resample must be one of {RESAMPLERS}, got {resample!r}")
        self.resample = resample

    def extra_repr(self) -> str:
        return (f"p={self.p}, xflip={self.xflip:g}, yflip={self.yflip:g}, scale={self.scale:g}, "
                f"rotate_frac={self.rotate_frac:g}, aniso={self.aniso:g}, "
                f"translate_frac={self.translate_frac:g}, resample={self.resample!r}")

    def _gate(self, multiplier: float, n: int, device, generator) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) < self.p * multiplier

    def sample(self, batch_size: int, height: int, width: int, *,
               device: torch.device | str | None = None,
               generator: Optional[torch.Generator] = None) -> AugmentDraw:
        """Draw the transforms for a batch (random numbers on the generator's device, if given)."""
        n = batch_size
        out_dev = torch.device(device) if device is not None else torch.device("cpu")
        dev = generator.device if generator is not None else out_dev
        zero = torch.zeros(n, device=dev)
        false = torch.zeros(n, dtype=torch.bool, device=dev)

        def coin(multiplier: float) -> torch.Tensor:  # x/y-flip: w in {0,1} where eligible
            if multiplier <= 0:
                return false
            w = torch.randint(0, 2, (n,), device=dev, generator=generator) == 1
            return w & self._gate(multiplier, n, dev, generator)

        xflip = coin(self.xflip)
        yflip = coin(self.yflip)

        scale_w, scale_on = zero, false
        if self.scale > 0:
            w = torch.randn(n, device=dev, generator=generator)
            scale_on = self._gate(self.scale, n, dev, generator)
            scale_w = torch.where(scale_on, w, zero)

        rot_w, rot_on = zero, false
        if self.rotate_frac > 0:
            w = (torch.rand(n, device=dev, generator=generator) * 2 - 1) * (math.pi * self.rotate_frac_max)
            rot_on = self._gate(self.rotate_frac, n, dev, generator)
            rot_w = torch.where(rot_on, w, zero)

        aniso_w, aniso_r, aniso_on = zero, zero, false
        if self.aniso > 0:
            w = torch.randn(n, device=dev, generator=generator)
            r = (torch.rand(n, device=dev, generator=generator) * 2 - 1) * math.pi
            aniso_on = self._gate(self.aniso, n, dev, generator)
            rotated = torch.rand(n, device=dev, generator=generator) < self.aniso_rotate_prob
            aniso_w = torch.where(aniso_on, w, zero)
            aniso_r = torch.where(rotated, r, zero)

        tx, ty, trans_on = zero, zero, false
        if self.translate_frac > 0:
            w = torch.randn(2, n, device=dev, generator=generator)
            trans_on = self._gate(self.translate_frac, n, dev, generator)
            tx, ty = torch.where(trans_on, w[0], zero), torch.where(trans_on, w[1], zero)

        labels = torch.stack([
            xflip.float(), yflip.float(), scale_w, torch.cos(rot_w) - 1, torch.sin(rot_w),
            aniso_w * torch.cos(aniso_r), aniso_w * torch.sin(aniso_r), tx, ty,
        ], dim=1)
        g_inv = inverse_map(height, width, scale_w=scale_w, rotate_w=rot_w, aniso_w=aniso_w,
                            aniso_r=aniso_r, translate_wx=tx, translate_wy=ty, scale_std=self.scale_std,
                            aniso_std=self.aniso_std, translate_frac_std=self.translate_frac_std)
        geometric = scale_on | rot_on | aniso_on | trans_on
        return AugmentDraw(xflip=xflip.to(out_dev), yflip=yflip.to(out_dev), geometric=geometric.to(out_dev),
                           g_inv=g_inv.to(out_dev), labels=labels.to(out_dev))

    def apply(self, images: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        """Apply a draw: flips by ``torch.flip``, then resample only the geometric samples."""
        out = images
        if bool(draw.xflip.any()):
            out = torch.where(draw.xflip[:, None, None, None], out.flip(3), out)
        if bool(draw.yflip.any()):
            out = torch.where(draw.yflip[:, None, None, None], out.flip(2), out)
        idx = draw.geometric.nonzero().squeeze(1)
        if idx.numel() > 0:
            warped = resample_affine(out.index_select(0, idx), draw.g_inv.index_select(0, idx), self.resample)
            out = out.index_copy(0, idx, warped)
        return out

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``images`` [N, C, H, W] (floating point, any device).

        Returns (images of the same shape, dtype and device, labels [N, 9] float32 on that device).
        With ``p == 0`` no random number is drawn and the input tensor itself is returned.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"need floating images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        n, _, h, w = images.shape
        if self.p == 0:
            return images, no_augment_labels(n, images.device)
        draw = self.sample(n, h, w, device=images.device, generator=generator)
        return self.apply(images, draw), draw.labels
