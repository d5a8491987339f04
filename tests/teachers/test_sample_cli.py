"""`sidbench teacher sample` on a tiny teacher: outputs, labels, seeding and resuming."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sidbench.teachers.sample_cli as sample_cli
from sidbench.cli import main
from sidbench.config import ConfigError, compose

STEPS = "2"  # 3 network evaluations per image: the sampler's structure, not its accuracy, is tested


def _sample(teacher: Path, out: Path, *, num: int = 13, batch: int = 4, seed: int = 0,
            dataset: str = "digits-cond") -> int:
    return main(["teacher", "sample", f"dataset={dataset}", f"dataset.teacher.path={teacher}", "device=cpu",
                 "--out", str(out), "--num", str(num), "--batch", str(batch), "--seed", str(seed), "--steps", STEPS])


def _folder_images(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("*.png"))
    return np.stack([np.asarray(Image.open(f)) for f in files])


@pytest.fixture
def count_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every batch the sampler draws."""
    sizes: list[int] = []
    heun = sample_cli.heun_sample

    def counting(net, z, labels=None, **kw):
        sizes.append(z.shape[0])
        return heun(net, z, labels, **kw)

    monkeypatch.setattr(sample_cli, "heun_sample", counting)
    return sizes


def test_npz_and_png_outputs_agree_with_cyclic_labels(tiny_cond_teacher: Path, tmp_path: Path,
                                                      count_batches: list[int]) -> None:
    assert _sample(tiny_cond_teacher, tmp_path / "s.npz") == 0
    assert count_batches == [4, 4, 4, 1]
    with np.load(tmp_path / "s.npz") as data:
        images, labels = data["images"], data["labels"]
    assert images.dtype == np.uint8 and images.shape == (13, 8, 8, 1)
    assert labels.tolist() == [i % 10 for i in range(13)]
    assert not (tmp_path / "s.npz.parts").exists()
    assert images.std() > 0  # not a constant image

    assert _sample(tiny_cond_teacher, tmp_path / "png") == 0
    names = sorted(p.name for p in (tmp_path / "png").iterdir() if not p.name.startswith("."))
    assert names == [f"{i:06d}.png" for i in range(13)]
    assert not list((tmp_path / "png").glob(".*.tmp"))
    pngs = _folder_images(tmp_path / "png")
    assert pngs.dtype == np.uint8 and pngs.shape == (13, 8, 8)  # grayscale PNGs
    np.testing.assert_array_equal(pngs, images[..., 0])  # same seed: the same images, in label order


def test_same_seed_same_images_other_seed_others(tiny_teacher: Path, tmp_path: Path) -> None:
    for name, seed in (("a.npz", 0), ("b.npz", 0), ("c.npz", 1)):
        assert _sample(tiny_teacher, tmp_path / name, num=6, batch=3, seed=seed, dataset="digits") == 0
    a, b, c = (np.load(tmp_path / n)["images"] for n in ("a.npz", "b.npz", "c.npz"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.load(tmp_path / "a.npz")["labels"].tolist() == [-1] * 6  # unconditional


def test_png_folder_resumes_missing_batches_only(tiny_cond_teacher: Path, tmp_path: Path,
                                                 count_batches: list[int]) -> None:
    out = tmp_path / "png"
    assert _sample(tiny_cond_teacher, out) == 0
    full = _folder_images(out)
    # Lose the last batch (index 12) and the end of batch 2 (indices 10, 11).
    for i in (10, 11, 12):
        (out / f"{i:06d}.png").unlink()
    count_batches.clear()
    assert _sample(tiny_cond_teacher, out) == 0
    assert count_batches == [4, 1]  # batches 0 and 1 were kept
    np.testing.assert_array_equal(_folder_images(out), full)


def test_npz_resumes_from_a_partial_parts_folder(tiny_cond_teacher: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, count_batches: list[int]) -> None:
    assert _sample(tiny_cond_teacher, tmp_path / "whole.npz") == 0
    with np.load(tmp_path / "whole.npz") as data:
        whole_images, whole_labels = data["images"], data["labels"]

    # A job killed during its third batch leaves two finished batches in `.parts`.
    counting = sample_cli.heun_sample
    drawn = 0

    def dies_on_third(net, z, labels=None, **kw):
        nonlocal drawn
        drawn += 1
        if drawn == 3:
            raise KeyboardInterrupt
        return counting(net, z, labels, **kw)

    monkeypatch.setattr(sample_cli, "heun_sample", dies_on_third)
    assert _sample(tiny_cond_teacher, tmp_path / "s.npz") == 130
    parts = tmp_path / "s.npz.parts"
    assert sorted(p.name for p in parts.glob("batch*")) == ["batch000000.npz", "batch000001.npz"]
    assert not (tmp_path / "s.npz").exists()

    monkeypatch.setattr(sample_cli, "heun_sample", counting)
    count_batches.clear()
    assert _sample(tiny_cond_teacher, tmp_path / "s.npz") == 0
    assert count_batches == [4, 1]  # only the two batches that were missing
    with np.load(tmp_path / "s.npz") as data:
        np.testing.assert_array_equal(data["images"], whole_images)
        np.testing.assert_array_equal(data["labels"], whole_labels)
    assert not parts.exists()


def test_a_png_cut_off_mid_write_is_never_taken_as_finished(tiny_teacher: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "png"
    real_save = Image.Image.save
    saved: list[str] = []

    def killed_mid_write(self, fp, *args, **kwargs):
        saved.append(str(fp))
        if len(saved) == 3:  # the last image of batch 0: write half a file, then die
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", killed_mid_write)
    assert _sample(tiny_teacher, out, num=6, batch=3, dataset="digits") == 130
    assert not (out / "000002.png").exists()  # the batch's marker never appeared
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert _sample(tiny_teacher, out, num=6, batch=3, dataset="digits") == 0
    assert _sample(tiny_teacher, tmp_path / "ref", num=6, batch=3, dataset="digits") == 0
    np.testing.assert_array_equal(_folder_images(out), _folder_images(tmp_path / "ref"))


def test_resuming_with_other_settings_is_refused(tiny_teacher: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "png"
    assert _sample(tiny_teacher, out, num=6, batch=3, dataset="digits") == 0
    capsys.readouterr()
    assert _sample(tiny_teacher, out, num=6, batch=3, seed=5, dataset="digits") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "seed 0 -> 5" in err
    # Directly, too (the function the CLI calls).
    cfg = compose(["dataset=digits", f"dataset.teacher.path={tiny_teacher}", "device=cpu"])
    with pytest.raises(ConfigError, match="batch 3 -> 2"):
        sample_cli.sample_teacher(cfg, out, num=6, batch=2, steps=2)


def test_options_may_come_between_overrides(tiny_teacher: Path, tmp_path: Path) -> None:
    # `key=value` after an option is still an override (argparse alone would refuse it).
    assert main(["teacher", "sample", "--out", str(tmp_path / "x.npz"), "dataset=digits", "--num", "2",
                 f"dataset.teacher.path={tiny_teacher}", "--steps", STEPS, "device=cpu"]) == 0
    assert np.load(tmp_path / "x.npz")["images"].shape == (2, 8, 8, 1)
