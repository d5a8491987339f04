"""Tests of the geometric augmentation pipe (sidbench/augment.py, docs/sid.md#augmentation)."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from sidbench.augment import (
    AUGMENT_DIM, RESAMPLERS, SYM6, AugmentPipe, inverse_map, no_augment_labels, resample_affine,
)

ONLY_OFF = dict(xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)


def only(**on) -> dict:
    """Multipliers with every transform off except those given."""
    return {**ONLY_OFF, **on}


def blobs(centres, size: int, sigma: float = 1.5) -> torch.Tensor:
    """[N, 1, size, size] Gaussian blobs at the given (x, y) pixel positions (x = column)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    c = torch.as_tensor(centres, dtype=torch.float64)
    d2 = (xx - c[:, 0, None, None]) ** 2 + (yy - c[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))[:, None].float()


def centroids(images: torch.Tensor) -> torch.Tensor:
    """[N, 2] intensity centroids (x, y) of [N, 1, H, W] images."""
    img = images[:, 0].double()
    h, w = img.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    m = img.sum(dim=(1, 2))
    return torch.stack([(img * xx).sum(dim=(1, 2)) / m, (img * yy).sum(dim=(1, 2)) / m], dim=1)


def centroids_near(images: torch.Tensor, around: torch.Tensor, radius: float) -> torch.Tensor:
    """Centroids using only the pixels within `radius` of `around` [N, 2] (ignores reflected copies)."""
    h, w = images.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    near = (xx - around[:, 0, None, None]) ** 2 + (yy - around[:, 1, None, None]) ** 2 <= radius**2
    return centroids(images * near[:, None].to(images.dtype))


# Centroid tolerance (pixels): bilinear sampling at the native resolution aliases a little.
TOL = {"sym6": 0.01, "bilinear": 0.03}


def binomial_ok(hits: torch.Tensor, prob: float, sigmas: float = 5.0) -> bool:
    n = hits.numel()
    sd = math.sqrt(n * prob * (1 - prob))
    return abs(hits.sum().item() - n * prob) <= sigmas * sd + 1e-9


# ---------------------------------------------------------------------------------------------

def test_sym6_filter_is_an_orthonormal_wavelet_with_six_vanishing_moments():
    h = torch.tensor(SYM6, dtype=torch.float64)
    assert h.numel() == 12
    assert h.sum().item() == pytest.approx(math.sqrt(2), abs=1e-12)
    for k in range(6):  # sum_n h[n] h[n + 2k] = delta_k
        assert (h[: 12 - 2 * k] * h[2 * k:]).sum().item() == pytest.approx(float(k == 0), abs=1e-12)
    n = torch.arange(12, dtype=torch.float64)
    g = h.flip(0) * (-1) ** n  # high-pass (quadrature mirror) filter
    for m in range(6):
        assert (g * n**m).sum().item() == pytest.approx(0.0, abs=1e-7 * 11**m)


def test_p0_is_the_identity_with_zero_labels_and_draws_nothing():
    x = torch.randn(5, 3, 8, 8)
    pipe = AugmentPipe(0.0)
    state = torch.get_rng_state()
    y, labels = pipe(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert y is x
    assert labels.shape == (5, AUGMENT_DIM) and labels.dtype == torch.float32
    assert torch.equal(labels, torch.zeros(5, AUGMENT_DIM))
    assert torch.equal(no_augment_labels(5), labels)


@pytest.mark.parametrize("resample", RESAMPLERS)
def test_xflip_only_flips_exactly_half_and_labels_slot_0(resample):
    x = torch.randn(400, 2, 6, 7)
    pipe = AugmentPipe(0.12, **only(xflip=1e8), resample=resample)
    y, labels = pipe(x, generator=torch.Generator().manual_seed(1))
    flipped = labels[:, 0] == 1
    assert set(labels[:, 0].tolist()) <= {0.0, 1.0}
    assert torch.equal(labels[:, 1:], torch.zeros(400, 8))
    assert torch.equal(y[flipped], x[flipped].flip(3))
    assert torch.equal(y[~flipped], x[~flipped])
    assert binomial_ok(flipped, 0.5)


@pytest.mark.parametrize("resample", RESAMPLERS)
def test_yflip_only_flips_exactly_and_labels_slot_1(resample):
    x = torch.randn(400, 3, 5, 4)
    pipe = AugmentPipe(1.0, **only(yflip=1), resample=resample)
    y, labels = pipe(x, generator=torch.Generator().manual_seed(2))
    flipped = labels[:, 1] == 1
    assert set(labels[:, 1].tolist()) <= {0.0, 1.0}
    assert torch.equal(labels[:, [0, 2, 3, 4, 5, 6, 7, 8]], torch.zeros(400, 8))
    assert torch.equal(y[flipped], x[flipped].flip(2))
    assert torch.equal(y[~flipped], x[~flipped])
    assert binomial_ok(flipped, 0.5)  # yflip * p = 1: eligible always, the coin flips half


def test_both_flips_compose_exactly():
    x = torch.randn(300, 1, 5, 5)
    pipe = AugmentPipe(1.0, **only(xflip=1, yflip=1))
    y, labels = pipe(x, generator=torch.Generator().manual_seed(3))
    both = (labels[:, 0] == 1) & (labels[:, 1] == 1)
    assert both.any()
    assert torch.equal(y[both], x[both].flip(2).flip(3))


@pytest.mark.parametrize("resample", RESAMPLERS)
def test_integer_translation_moves_pixels_exactly(resample):
    x = torch.randn(2, 3, 16, 12)
    g = torch.eye(3).repeat(2, 1, 1)
    g[:, 0, 2], g[:, 1, 2] = -2.0, 3.0  # content moves 2 right and 3 up
    y = resample_affine(x, g, resample)
    torch.testing.assert_close(y[:, :, :13, 2:], x[:, :, 3:, :10], atol=1e-4, rtol=0)
    torch.testing.assert_close(resample_affine(x, torch.eye(3).repeat(2, 1, 1), resample), x,
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("resample", RESAMPLERS)
def test_translation_moves_a_blob_by_the_labelled_shift(resample):
    size, n = 64, 64
    x = blobs([[31.5, 31.5]] * n, size)
    pipe = AugmentPipe(1.0, **only(translate_frac=1), resample=resample)
    y, labels = pipe(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(labels[:, :7], torch.zeros(n, 7))
    shift = labels[:, 7:9].double() * (0.125 * size)  # (0.125 W wx, 0.125 H wy)
    keep = shift.abs().amax(dim=1) < 20  # the blob stays clear of the reflected border
    assert keep.sum() > n // 2
    moved = centroids(y) - centroids(x)
    torch.testing.assert_close(moved[keep], shift[keep], atol=2e-3, rtol=0)


def test_translation_uses_width_for_x_and_height_for_y():
    h, w = 40, 80
    x = blobs([[39.5, 39.5]], 80)[:, :, 20:60, :]  # blob centred in a 40 x 80 image
    assert x.shape[-2:] == (h, w)
    pipe = AugmentPipe(1.0, **only(translate_frac=1))
    for seed in range(20):
        y, labels = pipe(x, generator=torch.Generator().manual_seed(seed))
        shift = labels[0, 7:9].double() * torch.tensor([0.125 * w, 0.125 * h], dtype=torch.float64)
        if shift[0].abs() < 20 and shift[1].abs() < 8:
            torch.testing.assert_close(centroids(y)[0] - centroids(x)[0], shift, atol=5e-3, rtol=0)
            return
    pytest.fail("no usable draw")


def expected_position(forward: torch.Tensor, src_centred: torch.Tensor, c: float,
                      resample: str) -> torch.Tensor:
    """Where a blob at centred position src goes under forward affine maps [N, 3, 3] (float64).

    EDM's sym6 scheme places input pixel k at fine position 2k, but the sym6 low-pass filter's
    centroid is about 5.098, not 5: the upsampled content sits delta = (centroid - 5) / 2 = 0.049
    pixels further along +x and +y, and the decimation moves it back by the same amount. The two
    cancel for translations; for a map with linear part A the content lands (A - I) delta off.
    """
    q = torch.einsum("nij,nj->ni", forward[:, :2, :2], src_centred) + forward[:, :2, 2] + c
    if resample == "sym6":
        h = torch.tensor(SYM6, dtype=torch.float64)
        delta = ((torch.arange(12, dtype=torch.float64) * h).sum() / h.sum() - 5) / 2
        d = torch.full((2,), delta.item(), dtype=torch.float64)
        q = q + torch.einsum("nij,j->ni", forward[:, :2, :2], d) - d
    return q


@pytest.mark.parametrize("resample", RESAMPLERS)
def test_rotation_turns_a_blob_counter_clockwise_by_the_labelled_angle(resample):
    size, n, r = 80, 48, 12.0
    c = (size - 1) / 2
    x = blobs([[c + r, c]] * n, size, sigma=2.0)  # to the right of the centre
    pipe = AugmentPipe(1.0, **only(rotate_frac=1), resample=resample)
    y, labels = pipe(x, generator=torch.Generator().manual_seed(5))
    zero_slots = [0, 1, 2, 5, 6, 7, 8]
    assert torch.equal(labels[:, zero_slots], torch.zeros(n, 7))
    cos_w, sin_w = labels[:, 3].double() + 1, labels[:, 4].double()
    torch.testing.assert_close(cos_w**2 + sin_w**2, torch.ones(n, dtype=torch.float64), atol=1e-6, rtol=0)
    # Displayed with y down, counter-clockwise by w: (x, y) -> (x cos w + y sin w, -x sin w + y cos w).
    forward = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    forward[:, 0, 0], forward[:, 0, 1], forward[:, 1, 0], forward[:, 1, 1] = cos_w, sin_w, -sin_w, cos_w
    src = torch.tensor([r, 0.0], dtype=torch.float64).repeat(n, 1)
    torch.testing.assert_close(centroids(y), expected_position(forward, src, c, resample), atol=0.01, rtol=0)
    if resample == "bilinear":  # and without the sym6 term, plainly
        expected = torch.stack([c + r * cos_w, c - r * sin_w], dim=1)
        torch.testing.assert_close(centroids(y), expected, atol=0.01, rtol=0)


def test_rotation_by_a_quarter_turn_permutes_pixels():
    x = torch.randn(1, 2, 9, 9)
    g = torch.eye(3)[None].clone()
    g[0, :2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # inverse map of w = pi/2
    # counter-clockwise quarter turn as displayed = torch.rot90 over (H, W)
    y = resample_affine(x, g, "bilinear")
    torch.testing.assert_close(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-4, rtol=0)
    # sym6 resamples a quarter turn between its fine pixels: close on a smooth image, not exact
    smooth = blobs([[12.0, 20.0]], 33, sigma=3.0)
    y = resample_affine(smooth, g, "sym6")
    assert (y - torch.rot90(smooth, 1, dims=(2, 3))).abs().max() < 0.03


@pytest.mark.parametrize("resample", RESAMPLERS)
def test_isotropic_scale_moves_a_blob_by_the_labelled_factor(resample):
    size, n, r = 80, 32, 10.0
    c = (size - 1) / 2
    x = blobs([[c + r, c - r]] * n, size, sigma=2.0)
    pipe = AugmentPipe(1.0, **only(scale=1), resample=resample)
    y, labels = pipe(x, generator=torch.Generator().manual_seed(6))
    s = torch.exp2(0.2 * labels[:, 2].double())
    forward = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    forward[:, 0, 0], forward[:, 1, 1] = s, s
    src = torch.tensor([r, -r], dtype=torch.float64).repeat(n, 1)
    expected = expected_position(forward, src, c, resample)
    torch.testing.assert_close(centroids(y), expected, atol=TOL[resample], rtol=0)


def test_labels_determine_the_map_up_to_the_sign_of_the_aniso_stretch():
    """(w, r) and (-w, r + pi) give the same aniso labels but inverse stretches: EDM's label keeps
    |w| and the axis; whether the axis is stretched or squeezed is lost. Everything else is exact."""
    n, size = 500, 32
    pipe = AugmentPipe(1.0)
    draw = pipe.sample(n, size, size, generator=torch.Generator().manual_seed(16))
    lab = draw.labels
    candidates = []
    for sign in (1, -1):
        candidates.append(inverse_map(
            size, size, scale_w=lab[:, 2], rotate_w=torch.atan2(lab[:, 4], lab[:, 3] + 1),
            aniso_w=sign * torch.hypot(lab[:, 5], lab[:, 6]), aniso_r=torch.atan2(lab[:, 6], lab[:, 5]),
            translate_wx=lab[:, 7], translate_wy=lab[:, 8]))
    err = torch.stack([(c - draw.g_inv).abs().amax(dim=(1, 2)) for c in candidates])
    assert (err.amin(dim=0) < 1e-4).all()
    assert (err.amax(dim=0) > 1e-2).any()  # the ambiguity is real


@pytest.mark.parametrize("resample", RESAMPLERS)
def test_composed_map_sends_blobs_where_the_map_says(resample):
    size, n = 96, 64
    c = (size - 1) / 2
    src = torch.tensor([c + 9.0, c - 6.0], dtype=torch.float64)
    x = blobs([src.tolist()] * n, size, sigma=2.0)
    pipe = AugmentPipe(0.8, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=0.5,
                       resample=resample)
    draw = pipe.sample(n, size, size, generator=torch.Generator().manual_seed(7))
    y = pipe.apply(x, draw)
    labels = draw.labels
    # flips first (about the centre), then the affine map g_inv^-1
    p = (src - c).repeat(n, 1)
    p[:, 0] = torch.where(labels[:, 0] == 1, -p[:, 0], p[:, 0])
    p[:, 1] = torch.where(labels[:, 1] == 1, -p[:, 1], p[:, 1])
    q = expected_position(torch.linalg.inv(draw.g_inv.double()), p, c, resample)
    inside = ((q > 12) & (q < size - 13)).all(dim=1)
    assert inside.sum() > n // 2
    found = centroids_near(y, q, 12.0)  # reflection may bring copies of the blob in from outside
    torch.testing.assert_close(found[inside], q[inside], atol=TOL[resample], rtol=0)
    assert draw.geometric.float().mean() > 0.5
    # the bilinear scheme without the sym6 term, the sym6 one with it
    plain = expected_position(torch.linalg.inv(draw.g_inv.double()), p, c, "bilinear")
    if resample == "sym6":
        assert (found[inside] - plain[inside]).abs().max() > 0.03


def test_resamplers_agree_on_smooth_images():
    x = blobs([[20.0, 30.0], [40.0, 25.0]], 64, sigma=4.0)
    pipe = AugmentPipe(1.0, **only(scale=1, rotate_frac=1, aniso=1, translate_frac=0.3))
    draw = pipe.sample(2, 64, 64, generator=torch.Generator().manual_seed(8))
    a = resample_affine(x, draw.g_inv, "sym6")
    b = resample_affine(x, draw.g_inv, "bilinear")
    assert (a - b).abs().max() < 0.05


def test_reflection_padding_about_the_edge_pixels():
    # A shift by one pixel to the right reads column -1, which reflects to column 1.
    x = torch.randn(1, 1, 6, 8)
    g = torch.eye(3)[None].clone()
    g[0, 0, 2] = -1.0
    for resample in RESAMPLERS:
        y = resample_affine(x, g, resample)
        torch.testing.assert_close(y[..., 0], x[..., 1], atol=1e-4, rtol=0)
        torch.testing.assert_close(y[..., 1:], x[..., :-1], atol=1e-4, rtol=0)


def test_transform_frequencies_and_label_distributions():
    n, p = 20000, 0.3
    pipe = AugmentPipe(p)
    draw = pipe.sample(n, 32, 32, generator=torch.Generator().manual_seed(9))
    lab = draw.labels.double()
    assert binomial_ok(lab[:, 0] == 1, 0.5)          # xflip=1e8: always eligible, half flip
    assert binomial_ok(lab[:, 1] == 1, p / 2)        # y-flip eligible with p, then a coin
    scale_on, rot_on = lab[:, 2] != 0, lab[:, 4] != 0
    aniso_on, trans_on = lab[:, 5:7].abs().sum(1) != 0, lab[:, 7:9].abs().sum(1) != 0
    for on in (scale_on, rot_on, aniso_on, trans_on):
        assert binomial_ok(on, p)
    assert binomial_ok(draw.geometric, 1 - (1 - p) ** 4)
    assert torch.equal(draw.geometric, scale_on | rot_on | aniso_on | trans_on)
    # scale label ~ N(0, 1) where applied; zero elsewhere
    assert stats.kstest(lab[scale_on, 2].numpy(), "norm").pvalue > 1e-3
    # rotation angle ~ U(-pi, pi) where applied
    ang = torch.atan2(lab[rot_on, 4], lab[rot_on, 3] + 1)
    assert stats.kstest(ang.numpy(), "uniform", args=(-math.pi, 2 * math.pi)).pvalue > 1e-3
    assert torch.equal(lab[~rot_on, 3:5], torch.zeros(int((~rot_on).sum()), 2, dtype=torch.float64))
    # anisotropic: r = 0 (slot 6 zero) half of the time; then slot 5 is w ~ N(0, 1)
    axis_aligned = aniso_on & (lab[:, 6] == 0)
    assert binomial_ok(axis_aligned[aniso_on], 0.5)
    assert stats.kstest(lab[axis_aligned, 5].numpy(), "norm").pvalue > 1e-3
    size = torch.hypot(lab[aniso_on, 5], lab[aniso_on, 6])  # |w|
    assert stats.kstest(size.numpy(), "chi", args=(1,)).pvalue > 1e-3
    rotated = aniso_on & ~axis_aligned
    r = torch.atan2(lab[rotated, 6], lab[rotated, 5])  # r or r + pi (sign of w): both uniform
    assert stats.kstest(r.numpy(), "uniform", args=(-math.pi, 2 * math.pi)).pvalue > 1e-3
    # translation labels ~ N(0, 1)^2, independent
    for k in (7, 8):
        assert stats.kstest(lab[trans_on, k].numpy(), "norm").pvalue > 1e-3
    assert abs(torch.corrcoef(lab[trans_on, 7:9].T)[0, 1]) < 0.05


def test_probability_is_capped_at_one_and_zero_multiplier_disables():
    pipe = AugmentPipe(0.5, xflip=0, yflip=0, scale=3.0, rotate_frac=0, aniso=0, translate_frac=1)
    lab = pipe.sample(2000, 8, 8, generator=torch.Generator().manual_seed(10)).labels
    assert (lab[:, 2] != 0).all()  # 0.5 * 3 >= 1: always
    assert binomial_ok(lab[:, 7] != 0, 0.5)
    assert torch.equal(lab[:, [0, 1, 3, 4, 5, 6]], torch.zeros(2000, 6))


def test_seeded_runs_are_reproducible_and_global_rng_works():
    x = torch.randn(16, 3, 8, 8)
    pipe = AugmentPipe(0.5)
    a = pipe(x, generator=torch.Generator().manual_seed(11))
    b = pipe(x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(12)
    c = pipe(x)
    torch.manual_seed(12)
    d = pipe(x)
    assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("resample", RESAMPLERS)
def test_dtype_and_shape_are_kept(dtype, resample):
    x = torch.randn(12, 3, 8, 8).to(dtype)
    y, labels = AugmentPipe(0.7, resample=resample)(x, generator=torch.Generator().manual_seed(13))
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert labels.shape == (12, AUGMENT_DIM) and labels.dtype == torch.float32
    assert torch.isfinite(y.float()).all()


def test_small_images_and_empty_batches():
    for size in (1, 2, 8):
        x = torch.randn(6, 1, size, size)
        y, labels = AugmentPipe(1.0)(x, generator=torch.Generator().manual_seed(size))
        assert y.shape == x.shape and torch.isfinite(y).all()
    y, labels = AugmentPipe(0.5)(torch.randn(0, 3, 8, 8))
    assert y.shape == (0, 3, 8, 8) and labels.shape == (0, AUGMENT_DIM)


def test_gradients_flow_to_the_images():
    x = torch.randn(8, 3, 8, 8, requires_grad=True)
    y, _ = AugmentPipe(1.0)(x, generator=torch.Generator().manual_seed(14))
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("resample", RESAMPLERS)
def test_device_follows_the_input(resample):
    x = torch.randn(32, 3, 16, 16, device="cuda", dtype=torch.float16)
    pipe = AugmentPipe(0.5, resample=resample)
    y, labels = pipe(x)
    assert y.device == x.device and labels.device == x.device and y.dtype == x.dtype
    # a CPU generator drives a CUDA batch: same draw as on the CPU, same images up to rounding
    a = pipe(x, generator=torch.Generator().manual_seed(15))
    b = pipe(x.cpu(), generator=torch.Generator().manual_seed(15))
    torch.testing.assert_close(a[1].cpu(), b[1])
    torch.testing.assert_close(a[0].cpu().float(), b[0].float(), atol=2e-2, rtol=0)
    g = torch.Generator(device="cuda").manual_seed(16)
    assert pipe(x, generator=g)[0].device == x.device


def test_untouched_samples_are_exact():
    x = torch.randn(300, 3, 8, 8)
    pipe = AugmentPipe(0.3)
    draw = pipe.sample(300, 8, 8, generator=torch.Generator().manual_seed(17))
    y = pipe.apply(x, draw)
    plain = ~draw.geometric & ~draw.xflip & ~draw.yflip
    assert plain.any() and torch.equal(y[plain], x[plain])
    assert torch.equal(draw.labels[plain], torch.zeros(int(plain.sum()), AUGMENT_DIM))
    only_x = ~draw.geometric & draw.xflip & ~draw.yflip
    assert only_x.any() and torch.equal(y[only_x], x[only_x].flip(3))


def test_sym6_matrices_match_pad_zero_stuff_and_filter():
    """The matrix form equals the textbook steps: reflect-pad, zero-stuff, convolve with h (gain
    sqrt 2 per axis), and for the way down, convolve with reversed h and keep every other sample."""
    import numpy as np

    from sidbench.augment import _sym6_down_matrix, _sym6_up_matrix

    h = np.asarray(SYM6)
    n, lo, hi = 7, 4, 9
    x = np.random.default_rng(0).standard_normal(n)
    padded = np.pad(x, (lo, hi), mode="reflect")  # numpy reflects again past the far edge
    stuffed = np.zeros(2 * padded.size)
    stuffed[::2] = padded  # sample k at position 2k
    full = np.convolve(stuffed, h) * math.sqrt(2)  # full[i] = sum_k stuffed[k] h[i - k]
    up_ref = full[5:5 + 2 * padded.size]  # so that u[m] = sqrt(2) sum_k p[k] h[m + 5 - 2k]
    up = _sym6_up_matrix(n, lo, hi, torch.tensor(SYM6, dtype=torch.float64)).numpy() @ x
    np.testing.assert_allclose(up, up_ref, atol=1e-12)

    border = 3
    y = np.random.default_rng(1).standard_normal(2 * (n + 2 * border))
    # corr[i] = sum_j h[j] y[i + j - 5]
    corr = np.correlate(np.pad(y, (5, 6)), h, mode="valid") / math.sqrt(2)
    down_ref = corr[::2][border:border + n]
    down = _sym6_down_matrix(n, border, torch.tensor(SYM6, dtype=torch.float64)).numpy() @ y
    np.testing.assert_allclose(down, down_ref, atol=1e-12)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        AugmentPipe(-0.1)
    with pytest.raises(ValueError):
        AugmentPipe(0.1, resample="bicubic")
    with pytest.raises(ValueError):
        AugmentPipe(0.1)(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError):
        AugmentPipe(0.1)(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
