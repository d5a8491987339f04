"""Image sources: folders and zips (read by clean-fid) and .npz arrays give back exactly the images put in."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from sidbench.eval.sources import file_batches, image_batches, npz_batches, to_nchw


def _images(n=11, h=8, w=6, c=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _collect(batches) -> np.ndarray:
    batches = list(batches)
    for b in batches:
        assert b.dtype == torch.uint8 and b.ndim == 4
    return torch.cat(batches).permute(0, 2, 3, 1).numpy()


def _save(img: np.ndarray, path, fmt="PNG"):
    Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(path, format=fmt)


def test_folder_round_trip_sorted_and_recursive(tmp_path):
    imgs = _images()
    for i, img in enumerate(imgs):
        sub = tmp_path / f"{i // 5:05d}"
        sub.mkdir(exist_ok=True)
        _save(img, sub / f"img{i:08d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    batches = list(file_batches(tmp_path, batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(_collect(batches), imgs)


def test_folder_grayscale_is_repeated_to_rgb_and_jpeg(tmp_path):
    gray = _images(n=3, c=1, seed=1)
    for i, img in enumerate(gray):
        _save(img, tmp_path / f"{i}.png")
    out = _collect(file_batches(tmp_path))
    assert out.shape == (3, 8, 6, 3)  # as clean-fid feeds its detector
    np.testing.assert_array_equal(out, np.repeat(gray, 3, axis=3))
    jpg_dir = tmp_path / "jpg"
    jpg_dir.mkdir()
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 1, 3))
    _save(smooth, jpg_dir / "a.jpg", fmt="JPEG")
    out = _collect(file_batches(jpg_dir))
    assert out.shape == (1, 16, 16, 3)
    assert np.abs(out.astype(int) - smooth).max() < 12  # lossy, but the same picture


def test_rgba_and_palette_become_rgb(tmp_path):
    rgba = np.concatenate([_images(n=1)[0], np.full((8, 6, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(_images(n=1, seed=2)[0]).convert("P").save(tmp_path / "b.png")
    out = _collect(file_batches(tmp_path))
    assert out.shape == (2, 8, 6, 3)
    np.testing.assert_array_equal(out[0], rgba[:, :, :3])


def test_mixed_sizes_are_one_clear_error(tmp_path):
    small, big = _images(n=2, h=4, w=4), _images(n=2, h=8, w=8, seed=3)
    for i, img in enumerate([small[0], small[1], big[0], big[1]]):
        _save(img, tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match=r"several sizes \(\[\(4, 4\), \(8, 8\)\]\)"):
        list(file_batches(tmp_path, batch_size=8))


def test_the_first_images_of_a_zip_in_name_order_whatever_the_process(tmp_path):
    # clean-fid lists a zip through a set (its order changes with PYTHONHASHSEED); ours is sorted
    imgs = _images(n=12)
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6]:
            tmp = tmp_path / "t.png"
            _save(imgs[i], tmp)
            zf.write(tmp, f"img{i:08d}.png")
    np.testing.assert_array_equal(_collect(file_batches(path, batch_size=5, num_samples=7)), imgs[:7])
    with pytest.raises(ValueError, match="only 12 images"):
        file_batches(path, num_samples=13)  # known before any image is read


@pytest.mark.parametrize("key", ["images", "arr_0"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npz_round_trip_detects_layout(tmp_path, key, layout):
    imgs = _images(n=9, h=5, w=7)
    arr = imgs if layout == "NHWC" else imgs.transpose(0, 3, 1, 2)
    path = tmp_path / "x.npz"
    np.savez(path, **{key: arr, "labels": np.arange(9)})
    np.testing.assert_array_equal(_collect(npz_batches(path, batch_size=4)), imgs)
    np.testing.assert_array_equal(_collect(image_batches(path, batch_size=4)), imgs)


def test_npz_grayscale_nhw_and_single_unnamed_array(tmp_path):
    gray = _images(n=4, c=1)[..., 0]
    np.savez(tmp_path / "g.npz", whatever=gray)
    out = _collect(npz_batches(tmp_path / "g.npz"))
    np.testing.assert_array_equal(out[..., 0], gray)


def test_npz_refuses_float_and_ambiguous_keys(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        npz_batches(tmp_path / "f.npz")
    np.savez(tmp_path / "k.npz", a=np.zeros((2, 4, 4, 3), np.uint8), b=np.zeros(2))
    with pytest.raises(ValueError, match="which array"):
        npz_batches(tmp_path / "k.npz")
    with pytest.raises(ValueError, match="channel"):
        to_nchw(np.zeros((2, 5, 5, 5), np.uint8))
    # Both ends could be channels: NHWC is assumed unless told otherwise.
    amb = np.zeros((2, 3, 4, 3), np.uint8)
    assert to_nchw(amb).shape == (2, 3, 3, 4)
    assert to_nchw(amb, layout="NCHW").shape == (2, 3, 4, 3)


def test_zip_round_trip_edm_layout(tmp_path):
    imgs = _images(n=7)
    path = tmp_path / "dataset.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i, img in reversed(list(enumerate(imgs))):  # stored out of order on purpose
            tmp = tmp_path / "t.png"
            _save(img, tmp)
            zf.write(tmp, f"{i // 4:05d}/img{i:08d}.png")
        zf.writestr("dataset.json", json.dumps({"labels": [[f"{i:05d}", i % 2] for i in range(7)]}))
    np.testing.assert_array_equal(_collect(file_batches(path, batch_size=3)), imgs)
    np.testing.assert_array_equal(_collect(image_batches(path, batch_size=3)), imgs)


def test_num_samples_takes_the_first_and_refuses_too_few(tmp_path):
    imgs = _images(n=10)
    np.savez(tmp_path / "x.npz", images=imgs)
    out = _collect(image_batches(tmp_path / "x.npz", batch_size=4, num_samples=6))
    np.testing.assert_array_equal(out, imgs[:6])
    with pytest.raises(ValueError, match="only 10 images"):
        list(image_batches(tmp_path / "x.npz", num_samples=11))


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        image_batches(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported"):
        image_batches(tmp_path / "x.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        file_batches(empty)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png: cannot identify"):
        list(file_batches(bad))
    (tmp_path / "named.bin").write_bytes(b"PK")
    with pytest.raises(ValueError, match="unsupported"):
        file_batches(tmp_path / "named.bin")


def test_generator_source_goes_through_generated_batches():
    def sample_fn(z, labels):
        return torch.zeros_like(z)

    batches = list(image_batches(sample_fn, batch_size=4, num_samples=10, shape=(1, 5, 5)))
    assert [b.shape for b in batches] == [(4, 1, 5, 5), (4, 1, 5, 5), (2, 1, 5, 5)]
    assert all((b == 128).all() for b in batches)
    with pytest.raises(ValueError, match="shape"):
        image_batches(sample_fn, num_samples=3)
