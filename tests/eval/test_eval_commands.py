"""The functions behind `sidbench fid` and `sidbench stats` (`sidbench.cli.score`), offline with small detectors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from sidbench.eval import reference as ref_mod
from sidbench.cli.score import fid_command, stats_command
from sidbench.eval.fid import CleanFIDExtractor
from sidbench.eval.reference import load_reference_stats, save_reference_stats

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")


def _console() -> Console:
    return Console(file=io.StringIO(), width=120, force_terminal=False)


def _features(x: torch.Tensor) -> torch.Tensor:
    pooled = torch.nn.functional.adaptive_avg_pool2d(x.double() / 255, 2).flatten(1)  # 12 values
    return torch.cat([pooled, pooled**2], dim=1)


def _write_folder(path, images):
    path.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(path / f"{i:05d}.png")
    return path


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_stats_then_fid_of_the_same_images_is_zero(tmp_path):
    real = _write_folder(tmp_path / "real", _images(40, 0))
    console = _console()
    out = stats_command(real, tmp_path / "refs" / "real", feature_extractor=_features, batch_size=16, console=console)
    assert out == tmp_path / "refs" / "real.npz"
    mu, sigma = load_reference_stats(out)
    assert mu.shape == (24,) and sigma.shape == (24, 24)
    assert "40" in console.file.getvalue() and str(out) in console.file.getvalue()

    np.savez(tmp_path / "same.npz", images=_images(40, 0))
    console = _console()
    value = fid_command(tmp_path / "same.npz", str(out), feature_extractor=_features, batch_size=7, console=console)
    assert value == pytest.approx(0, abs=1e-6)
    text = console.file.getvalue()
    assert "FID" in text and "0.0000" in text and "50,000" in text  # small-set note


def test_fid_command_other_images_and_num_samples(tmp_path):
    real = _images(60, 1)
    mu_sigma = stats_command(_write_folder(tmp_path / "real", real), tmp_path / "r.npz",
                             feature_extractor=_features, console=_console())
    np.savez(tmp_path / "fake.npz", arr_0=np.clip(_images(60, 2).astype(int) // 2, 0, 255).astype(np.uint8))
    far = fid_command(tmp_path / "fake.npz", mu_sigma, feature_extractor=_features, console=_console())
    part = fid_command(tmp_path / "fake.npz", mu_sigma, num_samples=30, feature_extractor=_features, console=_console())
    assert far > 0.01 and part > 0.01 and part != far


def test_clean_mode_against_edm_reference_warns(monkeypatch, tmp_path):
    ref = save_reference_stats(tmp_path / "cifar10-32x32.npz", np.zeros(24), np.eye(24))
    monkeypatch.setattr(ref_mod, "_fetch", lambda url, **kw: ref)
    np.savez(tmp_path / "x.npz", images=_images(4, 3))
    console = _console()
    fid_command(tmp_path / "x.npz", "cifar10", mode="clean", feature_extractor=_features, console=console)
    assert "not comparable" in console.file.getvalue()


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        fid_command(tmp_path, "cifar10", mode="legacy_pytorch", console=_console())


@pytest.mark.slow
def test_end_to_end_with_a_local_torchscript_detector_file(tmp_path, standin_weights):
    """Folder -> clean-fid wrapper around a TorchScript file -> EDM .npz -> FID (2048 features)."""
    real = _write_folder(tmp_path / "real", _images(12, 4))
    out = stats_command(real, tmp_path / "ref.npz", inception_path=standin_weights, device="cpu", console=_console())
    mu, sigma = load_reference_stats(out)
    assert mu.shape == (2048,)
    zipped = tmp_path / "real.zip"
    import zipfile

    with zipfile.ZipFile(zipped, "w") as zf:
        for p in sorted(real.iterdir()):
            zf.write(p, f"00000/{p.name}")
    value = fid_command(zipped, out, inception_path=standin_weights, device="cpu", console=_console())
    # 12 images give a covariance of rank 11 in 2048 dimensions: the ~2037 zero eigenvalues come
    # out of the eigensolver as +-round-off, whose square roots add up to about 1e-5 of the trace.
    assert abs(value) < 1e-4 * np.trace(sigma)


def test_local_torchscript_detector_file_feeds_stats_command(tmp_path, standin_weights):
    """The same path as above without the 2048-wide Frechet distance (slow on small CPUs)."""
    real = _write_folder(tmp_path / "real", _images(6, 5))
    out = stats_command(real, tmp_path / "ref.npz", inception_path=standin_weights, device="cpu",
                        mode="clean", console=_console())
    mu, _ = load_reference_stats(out)
    direct = CleanFIDExtractor.from_file(standin_weights, "clean")(
        torch.from_numpy(_images(6, 5)).permute(0, 3, 1, 2)
    )
    np.testing.assert_allclose(mu, direct.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
