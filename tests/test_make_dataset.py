"""`sidbench dataset`: EDM dataset zips from CIFAR-10 (torchvision's own download and checks, run
against a small archive of CIFAR-10's layout served on 127.0.0.1) and from an image folder; what it
writes opens as training images with the right pixels and classes."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sidbench.cli import main
from sidbench.data.make_dataset import member_name, write_edm_zip
from sidbench.data.real import DataError, open_edm_dataset
from sidbench.testing.file_server import serving, without_proxies

CPU = torch.device("cpu")


def _all_images(path: Path, shape: tuple[int, int, int], label_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    data = open_edm_dataset(path, shape, label_dim)
    pixels = data.read_uint8(list(range(data.count)))
    return pixels, data.classes


def test_a_folder_becomes_a_zip_with_classes_from_its_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    made = {}
    for cls in ("cat", "dog"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / cls / f"{i}.png")
            made[(cls, i)] = pixels
    # one wide image: centre-cropped to 8x8 (columns 4..11), then kept at 8x8
    wide = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "photos" / "dog" / "wide.png")
    out = tmp_path / "mine.zip"
    assert main(["dataset", str(tmp_path / "photos"), "--out", str(out), "--resolution", "8", "--labels-from-folders"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"dataset {out} 7"
    pixels, classes = _all_images(out, (3, 8, 8), 2)
    # sorted by path: cat/0..2, dog/0..2, dog/wide
    want = [made[("cat", i)] for i in range(3)] + [made[("dog", i)] for i in range(3)] + [wide[:, 4:12]]
    assert torch.equal(pixels, torch.from_numpy(np.stack(want)).permute(0, 3, 1, 2))
    assert classes.tolist() == [0, 0, 0, 1, 1, 1, 1]
    # resized when the size differs: 16x16 -> 8x8
    assert main(["dataset", str(tmp_path / "photos"), "--out", str(tmp_path / "small.zip"), "--resolution", "4"]) == 0
    pixels, classes = _all_images(tmp_path / "small.zip", (3, 4, 4), 0)
    assert pixels.shape == (7, 3, 4, 4) and classes is None


def test_the_zip_layout_is_edms(tmp_path: Path) -> None:
    import json
    import zipfile

    images = [(np.full((2, 2, 1), i % 256, np.uint8), i % 2) for i in range(1002)]
    path, count = write_edm_zip(tmp_path / "d.zip", images)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = json.loads(z.read("dataset.json"))
    assert count == 1002 and names[0] == "00000/img00000000.png" and names[1001] == "00001/img00001001.png"
    assert member_name(999) == "00000/img00000999.png" and member_name(1000) == "00001/img00001000.png"
    assert meta["labels"][1001] == ["00001/img00001001.png", 1]
    with pytest.raises(DataError, match="give every image a class or none"):
        write_edm_zip(tmp_path / "e.zip", [(np.zeros((2, 2, 1), np.uint8), 0), (np.zeros((2, 2, 1), np.uint8), None)])
    assert not (tmp_path / "e.zip").exists() and not list(tmp_path.glob("*.partial"))


def _cifar_archive(batches: list[tuple[np.ndarray, list[int]]]) -> tuple[bytes, dict[str, str]]:
    """A tar.gz in CIFAR-10's python layout (5 training batches, a test batch, batches.meta) and the
    MD5 of each member."""
    members: dict[str, bytes] = {}
    for i, (data, labels) in enumerate(batches, start=1):
        members[f"data_batch_{i}"] = pickle.dumps({"data": data, "labels": labels})
    members["test_batch"] = pickle.dumps({"data": batches[0][0], "labels": batches[0][1]})
    members["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)]})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), {k: hashlib.md5(v).hexdigest() for k, v in members.items()}


def test_cifar10_through_torchvisions_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR10

    rng = np.random.default_rng(1)
    batches = [(rng.integers(0, 256, (2, 3072), dtype=np.uint8), [int(x) for x in rng.integers(0, 10, 2)])
               for _ in range(5)]
    archive, md5 = _cifar_archive(batches)

    with serving({"/cifar-10-python.tar.gz": archive}) as server:
        without_proxies(monkeypatch)
        # torchvision's own download, extraction and MD5 checks, pointed at this archive
        monkeypatch.setattr(CIFAR10, "url", server.url("/cifar-10-python.tar.gz"))
        monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive).hexdigest())
        monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
        monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]})
        out = tmp_path / "cifar10-32x32.zip"
        assert main(["dataset", "cifar10", "--out", str(out)]) == 0
    pixels, classes = _all_images(out, (3, 32, 32), 10)
    # CIFAR-10 rows are 1024 red, 1024 green, 1024 blue values: CHW already
    want = np.concatenate([d for d, _ in batches]).reshape(-1, 3, 32, 32)
    assert torch.equal(pixels, torch.from_numpy(want))
    assert classes.tolist() == [c for _, labels in batches for c in labels]
    assert (tmp_path / "cifar10-download" / "cifar-10-batches-py").is_dir()  # torchvision's copy, beside --out


def test_a_folder_needs_a_resolution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "photos").mkdir()
    assert main(["dataset", str(tmp_path / "photos"), "--out", str(tmp_path / "x.zip")]) == 2
    assert "--resolution" in capsys.readouterr().err
