"""FID: the distance itself, the statistics stream, and clean-fid's feature path with stand-ins."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from sidbench.eval import fid as fid_mod
from sidbench.eval.fid import (
    FID,
    INCEPTION_ENV,
    INCEPTION_FILENAME,
    INCEPTION_URL,
    CleanFIDExtractor,
    inception_weights,
    load_inception_detector,
)
from sidbench.eval.frechet import feature_statistics
from sidbench.eval.sources import RunningStats, compute_stats, file_batches

# The stand-in detector file is TorchScript, which recent torch marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")



def random_images(n: int, channels: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    """uint8 NHWC images with some structure (a per-image gradient plus noise)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :, None, None] * rng.uniform(0, 255, (n, 1, 1, channels))
    noise = rng.integers(0, 64, (n, size, size, channels))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def _batches(images_nhwc: np.ndarray, batch_size: int = 16):
    t = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
    return [t[i : i + batch_size] for i in range(0, len(t), batch_size)]


def _pixel_features(dim: int = 8, seed: int = 0):
    """A fixed random projection of pooled pixels: uint8 [B, 3, H, W] -> [B, dim]."""
    proj = torch.from_numpy(np.random.default_rng(seed).normal(size=(3 * 4 * 4, dim)))

    def extract(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.double() / 255, 4).flatten(1)
        return torch.tanh(pooled @ proj)

    return extract


class _Lookup:
    """Extractor returning a given feature row per image; the image encodes its row index."""

    def __init__(self, features: np.ndarray):
        self.features = features

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        idx = x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()
        return self.features[idx.numpy()]


def _index_images(n: int) -> list[torch.Tensor]:
    img = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    img[:, 0, 0, 0] = torch.arange(n) % 256
    img[:, 0, 0, 1] = torch.arange(n) // 256
    return [img[i : i + 13] for i in range(0, n, 13)]


def _exact_gaussian_sample(n: int, mu: np.ndarray, var: np.ndarray, seed: int) -> np.ndarray:
    """n points whose sample mean is `mu` and sample covariance (n - 1) is diag(var), exactly."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, mu.shape[0]))
    q, _ = np.linalg.qr(g - g.mean(axis=0))  # orthonormal columns, each orthogonal to ones
    return mu + np.sqrt(n - 1) * q * np.sqrt(var)


# ------------------------------------------------------------------------------------------------
# The distance


def test_fid_of_a_set_against_itself_is_zero():
    images = random_images(120, seed=3)
    extract = _pixel_features()
    ref = compute_stats(_batches(images), extract)
    metric = FID(ref, feature_extractor=extract)
    value = metric.compute(_batches(images, batch_size=7))
    assert abs(value) < 1e-6
    assert metric.num_images == 120
    assert metric.name == "fid"


def test_fid_matches_closed_form_for_diagonal_gaussians():
    n, d = 400, 12
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    f1 = _exact_gaussian_sample(n, mu1, s1, seed=1)
    f2 = _exact_gaussian_sample(n, mu2, s2, seed=2)
    # The generated set's features are f1, the reference's are f2, both through the stream.
    ref = compute_stats(_index_images(n), _Lookup(f2))
    np.testing.assert_allclose(ref[0], mu2, atol=1e-12)
    np.testing.assert_allclose(ref[1], np.diag(s2), atol=1e-12)
    value = FID(ref, feature_extractor=_Lookup(f1)).compute(_index_images(n))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert value == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_fid_matches_scipy_sqrtm_for_full_covariances():
    rng = np.random.default_rng(5)
    d = 10
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    metric = FID((mu2, s2), feature_extractor=lambda x: None)
    assert metric.distance(mu1, s1) == pytest.approx(expected, rel=1e-9)


def test_running_stats_equal_batch_statistics_despite_large_offset():
    rng = np.random.default_rng(2)
    feats = 1e6 + rng.normal(size=(257, 5)) * np.arange(1, 6)
    stats = RunningStats()
    for chunk in np.array_split(feats, [1, 3, 64, 65, 200]):
        stats.update(chunk)
    mu, sigma = feature_statistics(feats - 1e6)
    assert stats.n == 257
    np.testing.assert_allclose(stats.mu - 1e6, mu, atol=1e-8)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-9, atol=1e-9)
    assert stats.sigma.dtype == np.float64


def test_grayscale_is_repeated_to_three_channels():
    gray = random_images(40, channels=1, seed=4)
    rgb = np.repeat(gray, 3, axis=3)
    seen = []
    extract = _pixel_features()

    def spy(x):
        seen.append(tuple(x.shape))
        return extract(x)

    mu_g, sigma_g = compute_stats(_batches(gray), spy)
    mu_c, sigma_c = compute_stats(_batches(rgb), extract)
    assert all(s[1] == 3 for s in seen)
    np.testing.assert_array_equal(mu_g, mu_c)
    np.testing.assert_array_equal(sigma_g, sigma_c)


def test_bad_batches_and_modes_are_refused():
    extract = _pixel_features()
    with pytest.raises(ValueError, match="uint8"):
        compute_stats([torch.zeros(2, 3, 4, 4)], extract)
    with pytest.raises(ValueError, match="channels"):
        compute_stats([torch.zeros(2, 4, 4, 4, dtype=torch.uint8)], extract)
    with pytest.raises(ValueError, match="mode"):
        FID((np.zeros(2), np.eye(2)), mode="legacy_pytorch")
    with pytest.raises(ValueError, match="dimension"):
        FID((np.zeros(3), np.eye(3)), feature_extractor=extract).compute(_batches(random_images(4)))


def test_building_fid_touches_nothing(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("network touched")

    monkeypatch.setattr(fid_mod, "_fetch", boom)
    FID("ffhq64")  # neither the reference nor the detector is resolved yet


# ------------------------------------------------------------------------------------------------
# clean-fid's preprocessing with a small detector


@pytest.mark.parametrize("mode", ["legacy_tensorflow", "clean"])
def test_cleanfid_path_end_to_end_with_tiny_detector(mode, tiny_detector):
    extractor = CleanFIDExtractor(tiny_detector, mode=mode, device="cpu")
    assert tiny_detector.resize_inside == (mode == "legacy_tensorflow")
    real, fake = random_images(48, seed=10), random_images(48, seed=11)
    ref = compute_stats(_batches(real), extractor)
    assert ref[0].shape == (6,) and ref[1].shape == (6, 6)
    assert FID(ref, mode=mode, feature_extractor=extractor).compute(_batches(real)) == pytest.approx(0, abs=1e-6)
    value = FID(ref, mode=mode, feature_extractor=extractor).compute(_batches(fake))
    assert np.isfinite(value) and value > 0


def test_clean_mode_feeds_cleanfid_resized_images(tiny_detector):
    from cleanfid.resize import build_resizer

    extractor = CleanFIDExtractor(tiny_detector, mode="clean")
    images = random_images(3, seed=12)
    batch = extractor.preprocess(_batches(images)[0])
    assert batch.shape == (3, 3, 299, 299) and batch.dtype == torch.float32
    expected = build_resizer("clean")(images[1])
    np.testing.assert_array_equal(batch[1].permute(1, 2, 0).numpy(), expected)
    legacy = CleanFIDExtractor(tiny_detector, mode="legacy_tensorflow").preprocess(_batches(images)[0])
    assert legacy.shape == (3, 3, 16, 16) and legacy.dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# The detector file: local weights, clean-fid's wrapper, offline errors


@pytest.mark.parametrize("mode", ["legacy_tensorflow", "clean"])
def test_local_weights_file_runs_through_cleanfid_wrapper(mode, standin_weights):
    from cleanfid.inception_torchscript import InceptionV3W

    net = load_inception_detector(standin_weights, mode)
    assert isinstance(net, InceptionV3W) and net.resize_inside == (mode == "legacy_tensorflow")
    images = _batches(random_images(5, seed=13))[0]
    feats = CleanFIDExtractor(net, mode)(images)
    assert feats.shape == (5, 2048)
    base = torch.jit.load(standin_weights)
    with torch.no_grad():
        if mode == "legacy_tensorflow":
            direct = base(images.float(), True)
        else:
            resized = CleanFIDExtractor(net, mode).preprocess(images)
            direct = base.layers((resized - 128) / 128)
    np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["legacy_tensorflow", "clean"])
def test_features_match_cleanfid_folder_pipeline(mode, standin_weights, tmp_path):
    """Our stream gives the features clean-fid's own folder code gives, image by image."""
    from cleanfid.fid import get_folder_features
    from cleanfid.inception_torchscript import InceptionV3W

    images = random_images(6, seed=14)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    canonical = tmp_path / "w"
    canonical.mkdir()
    shutil.copyfile(standin_weights, canonical / INCEPTION_FILENAME)
    theirs_net = InceptionV3W(str(canonical), download=False, resize_inside=mode == "legacy_tensorflow")
    theirs = get_folder_features(str(folder), theirs_net, num_workers=0, batch_size=4,
                                 device=torch.device("cpu"), mode=mode, verbose=False)
    extractor = CleanFIDExtractor.from_file(canonical / INCEPTION_FILENAME, mode)
    ours = np.concatenate([extractor(b) for b in file_batches(folder, batch_size=4)])
    # Their folder loader goes through ToTensor()*255 (float round-off on the pixels).
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_weights_from_environment_variable(monkeypatch, standin_weights, tmp_path):
    monkeypatch.setattr(fid_mod, "_fetch", lambda *a, **k: pytest.fail("must not download"))
    monkeypatch.setenv(INCEPTION_ENV, standin_weights)
    assert inception_weights() == Path(standin_weights)
    metric = FID((np.zeros(2048), np.eye(2048)), device="cpu")
    mu, sigma = metric.compute_stats(_batches(random_images(4, seed=15), batch_size=3))
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    assert isinstance(metric.feature_extractor, CleanFIDExtractor)


def test_explicit_weights_path_wins_over_environment(monkeypatch, standin_weights, tmp_path):
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "nowhere.pt"))
    assert inception_weights(standin_weights) == Path(standin_weights)
    assert FID((np.zeros(2), np.eye(2)), inception_path=standin_weights).inception_path == standin_weights


@pytest.mark.parametrize("via_env", [False, True])
def test_missing_local_weights_error_names_address_and_path(monkeypatch, tmp_path, via_env):
    from sidbench.download import DownloadError

    monkeypatch.setattr(fid_mod, "_fetch", lambda *a, **k: pytest.fail("must not download"))
    missing = tmp_path / "inception.pt"
    if via_env:
        monkeypatch.setenv(INCEPTION_ENV, str(missing))
    with pytest.raises(DownloadError) as info:
        FID((np.zeros(2), np.eye(2)), inception_path=None if via_env else missing).compute(_batches(random_images(2)))
    msg = str(info.value)
    assert "\n" not in msg and INCEPTION_URL in msg and str(missing) in msg


def _offline(monkeypatch):
    """Every HTTP request fails as on a machine without network (name lookup fails)."""
    import socket

    def no_network(*args, **kwargs):  # every name lookup fails, as on a machine without network
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)


def test_offline_without_weights_error_names_address_and_path(monkeypatch, tmp_path):
    from sidbench.download import DownloadError

    _offline(monkeypatch)
    metric = FID((np.zeros(2), np.eye(2)), cache_dir=tmp_path)
    with pytest.raises(DownloadError) as info:
        metric.compute(_batches(random_images(2)))
    msg = str(info.value)
    assert "\n" not in msg
    assert INCEPTION_URL in msg and str(tmp_path / INCEPTION_FILENAME) in msg and INCEPTION_ENV in msg


def test_copy_put_in_cache_by_hand_is_used_offline(monkeypatch, tmp_path, standin_weights):
    _offline(monkeypatch)
    shutil.copyfile(standin_weights, tmp_path / INCEPTION_FILENAME)
    assert inception_weights(cache_dir=tmp_path) == tmp_path / INCEPTION_FILENAME


def test_corrupt_weights_file_gives_one_line_error(tmp_path):
    bad = tmp_path / INCEPTION_FILENAME
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(RuntimeError) as info:
        load_inception_detector(bad)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and INCEPTION_URL in msg


def test_import_keeps_cleanfid_and_downloader_out():
    code = (
        "import sys, sidbench.eval.fid, sidbench.eval.reference, sidbench.eval.sources, sidbench.cli.score;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('cleanfid', 'requests', 'urllib3', 'torchvision')"
        " or m == 'sidbench.download'];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fid_accepts_mu_sigma_positionally():
    extract = _pixel_features()
    images = random_images(30, seed=16)
    mu, sigma = compute_stats(_batches(images), extract)
    assert FID(mu, sigma, feature_extractor=extract).compute(_batches(images)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="symmetric"):
        FID(mu, sigma + np.triu(np.ones_like(sigma), 1))
