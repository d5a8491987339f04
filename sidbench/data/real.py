"""Real training images, for the methods that use them (SiDA's adversarial term on real data,
progressive distillation's data mode). SiD itself is data-free and never opens them.

The images are an EDM dataset (the zip or folder that EDM's `dataset_tool.py` or `sidbench dataset`
writes: `00000/img00000000.png`, ..., and a `dataset.json` holding `{"labels": [[name, class], ...]}`
or null), or the bundled digits. `open_real_images` checks a dataset when it opens it (the zip
opens, `dataset.json` parses, the first image decodes at the teacher's channels and resolution,
every image has a class when the teacher is conditional): each failure is one line naming the file.

Two ways to draw batches, both uniform with replacement:
- `RealImages.draw` (the bundled digits, held in memory): from the caller's random state. The step
  context seeds each micro-batch by its position, so the real images of a micro-batch, like its
  noise, are a function of (seed, iteration, update, micro-batch); a resumed run repeats them and N
  DDP processes draw what one process draws.
- `sidbench.data.loader.RealImageLoader` (an EDM dataset on disk, decoded by DataLoader worker
  processes ahead of the training loop): a stream of its own, fixed by (seed, rank), whose position
  the checkpoint keeps. Images are decoded when drawn, so a dataset of any size stays on disk.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sidbench.errors import UserError


class DataError(UserError, RuntimeError):
    """The training images a method needs are missing or do not fit the teacher."""


#: indices -> float32 images [n, C, H, W] in [-1, 1] on the CPU
Reader = Callable[[Sequence[int]], torch.Tensor]
#: indices -> uint8 images [n, C, H, W] on the CPU, as stored
RawReader = Callable[[Sequence[int]], torch.Tensor]


class RealImages:
    """A dataset of real images and their classes, drawn in random batches. `read_uint8`, where the
    images are files to decode, reads them as stored (what a loader's workers hand over)."""

    def __init__(self, count: int, read: Reader, classes: torch.Tensor | None, label_dim: int, source: str,
                 read_uint8: RawReader | None = None) -> None:
        if count == 0:
            raise DataError(f"{source} holds no images")
        self.count = count
        self._read = read
        self.read_uint8 = read_uint8
        self.classes = classes
        self.label_dim = label_dim
        self.source = source

    def __len__(self) -> int:
        return self.count

    def draw(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n images (float [-1, 1]) and their one-hot labels (None if unconditional), on `device`."""
        index = torch.randint(self.count, (n,))
        images = self._read(index.tolist()).to(device)
        if not self.label_dim:
            return images, None
        return images, torch.nn.functional.one_hot(self.classes[index], self.label_dim).float().to(device)


def _parse_meta(data: bytes, where: Path) -> dict | None:
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"the dataset.json of {where} is not JSON ({e}); it must hold "
                        '{"labels": [[image name, class], ...]} or {"labels": null}') from None
    if meta is not None and not isinstance(meta, dict):
        raise DataError(f"the dataset.json of {where} holds a {type(meta).__name__}, not "
                        '{"labels": [[image name, class], ...]} or {"labels": null}')
    return meta


def _edm_dataset(path: Path) -> tuple[list[str], Callable[[str], bytes], dict | None]:
    """(sorted image names, a reader of one name's bytes, the parsed dataset.json or None)."""
    from sidbench.data.image_files import folder_files, zip_members

    if path.is_dir():
        names = [p.relative_to(path).as_posix() for p in folder_files(path)]
        meta_file = path / "dataset.json"
        meta = _parse_meta(meta_file.read_bytes(), meta_file) if meta_file.is_file() else None
        return names, lambda name: (path / name).read_bytes(), meta
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        handle: dict[int, zipfile.ZipFile] = {}

        def read(name: str) -> bytes:
            # one handle per process: a forked DDP or loader process must not share the parent's
            pid = os.getpid()
            if pid not in handle:
                handle.clear()
                handle[pid] = zipfile.ZipFile(path)
            return handle[pid].read(name)

        try:
            names = zip_members(path)
            with zipfile.ZipFile(path) as z:
                meta = _parse_meta(z.read("dataset.json"), path) if "dataset.json" in z.namelist() else None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"{path} is not a readable zip ({' '.join(str(e).split())}); make it again "
                            "(docs/data.md) or point dataset.images.path at another copy") from None
        return names, read, meta
    raise DataError(f"{path} is neither a folder nor a zip of images; point dataset.images.path at an EDM dataset "
                    "(made by EDM's dataset_tool.py)")


def open_edm_dataset(path: str | os.PathLike, shape: tuple[int, int, int], label_dim: int) -> RealImages:
    """An EDM dataset zip or folder whose images must have the teacher's `shape` (C, H, W)."""
    from sidbench.data.image_files import decode_image, uint8_to_float

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"training images {path} do not exist; set dataset.images.path=<EDM dataset zip or folder>")
    names, read_bytes, meta = _edm_dataset(path)
    if not names:
        raise DataError(f"{path} holds no images")

    def read_uint8(index: Sequence[int]) -> torch.Tensor:
        # decoded HWC uint8 -> NCHW uint8; a member that cannot be read or decoded is one line
        try:
            hwc = np.stack([decode_image(read_bytes(names[i]), names[i]) for i in index])
        except (UserError, OSError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"training images {path}: {' '.join(str(e).split())}") from None
        except ValueError as e:  # images of different sizes in one batch
            raise DataError(f"training images {path}: {e}; every image must have the teacher's size") from None
        return torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()

    def read(index: Sequence[int]) -> torch.Tensor:
        return uint8_to_float(read_uint8(index))  # in [-1, 1], as EDM's training loop scales them

    first = read([0])
    if tuple(first.shape[1:]) != tuple(shape):
        c, h, w = first.shape[1:]
        raise DataError(f"images in {path} are {c}x{h}x{w} (CxHxW) but the teacher makes {'x'.join(map(str, shape))}; "
                        "make the dataset at the teacher's resolution with EDM's dataset_tool.py")
    classes = None
    if label_dim:
        try:
            labels = dict((meta or {}).get("labels") or [])
        except (TypeError, ValueError):
            raise DataError(f"the labels in the dataset.json of {path} are not [[image name, class], ...]") from None
        missing = [n for n in names if n not in labels]
        if missing:
            raise DataError(f"the teacher is class-conditional but {path} has no label for {missing[0]} "
                            f"({len(missing)} of {len(names)} images); its dataset.json must list every image's class")
        classes = torch.tensor([int(labels[n]) for n in names], dtype=torch.int64)
        if int(classes.max()) >= label_dim:
            raise DataError(f"{path} has class {int(classes.max())} but the teacher knows {label_dim} classes")
    return RealImages(len(names), read, classes, label_dim, str(path), read_uint8=read_uint8)


def open_real_images(dataset: DictConfig, shape: tuple[int, int, int], label_dim: int) -> RealImages:
    """The training images a dataset card names: `dataset.images.path`, else its builtin images."""
    images = dataset.get("images") or {}
    if images.get("path"):
        return open_edm_dataset(str(images.path), shape, label_dim)
    if images.get("builtin") == "digits":
        from sidbench.data.digits import load_digits_tensors

        pixels, classes = load_digits_tensors()
        return RealImages(len(pixels), lambda index: pixels[list(index)], classes, label_dim, "scikit-learn digits")
    raise DataError(f"this method trains on real images and dataset {dataset.name} has none configured; "
                    "set dataset.images.path=<EDM dataset zip or folder> (made by EDM's dataset_tool.py)")
