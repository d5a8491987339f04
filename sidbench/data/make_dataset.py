"""Making an EDM dataset zip, the training images `dataset.images.path` names (`sidbench dataset`).

The layout is the one EDM's `dataset_tool.py` writes and `sidbench.data.real` reads: PNG files
`00000/img00000000.png`, `00000/img00000001.png`, ... (1000 to a folder), and `dataset.json`
holding `{"labels": [[file name, class], ...]}`, or `{"labels": null}` for images without classes.
Two sources:
- `cifar10`: CIFAR-10's 50,000 training images and their classes, through torchvision's
  `CIFAR10(train=True, download=True)` (its address and MD5 checks), in the order of its
  `data_batch_1` ... `data_batch_5`, the order EDM's own CIFAR-10 zip has;
- an image folder: every image under it (sorted by path), centre-cropped to a square and resized
  to `resolution` (PIL's Lanczos filter) when it is not that size already; with `labels_from_folders`
  each image's class is the index of its first-level sub-folder in sorted order.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from sidbench.data.real import DataError

#: Images to a folder of the zip, as EDM's tool writes them.
PER_FOLDER = 1000


def member_name(i: int) -> str:
    return f"{i // PER_FOLDER:05d}/img{i:08d}.png"


def write_edm_zip(out: str | os.PathLike, images: Iterable[tuple[np.ndarray, int | None]]) -> tuple[Path, int]:
    """Write (uint8 HWC image, class or None) pairs as an EDM dataset zip at `out`, atomically (a
    partial file never has the final name). Returns (the path, the count). Either every image has a
    class or none has."""
    from PIL import Image

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise DataError(f"{out}: an EDM dataset zip's name ends in .zip")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    labels: list[list] = []
    count = 0
    labelled: bool | None = None  # set by the first image
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:  # PNGs are compressed already
            for count, (pixels, label) in enumerate(images, start=1):
                name = member_name(count - 1)
                buf = io.BytesIO()
                Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buf, format="PNG")
                z.writestr(name, buf.getvalue())
                if labelled is None:
                    labelled = label is not None
                elif labelled != (label is not None):
                    raise DataError(f"{out}: image {count - 1} {'has' if label is not None else 'lacks'} a class and "
                                    "the first did not: give every image a class or none")
                if label is not None:
                    labels.append([name, int(label)])
            z.writestr("dataset.json", json.dumps({"labels": labels or None}))
        if count == 0:
            raise DataError(f"no images to write to {out}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, count


def cifar10_images(root: str | os.PathLike, *, download: bool = True) -> Iterator[tuple[np.ndarray, int]]:
    """CIFAR-10's training images (uint8 32x32x3) with their classes, through torchvision."""
    from torchvision.datasets import CIFAR10

    try:
        data = CIFAR10(str(root), train=True, download=download)
    except (RuntimeError, OSError) as e:  # torchvision: a failed download or a corrupt copy
        raise DataError(f"CIFAR-10 through torchvision into {root}: {' '.join(str(e).split())}") from None
    for pixels, label in zip(data.data, data.targets):
        yield np.ascontiguousarray(pixels, dtype=np.uint8), int(label)


def _square(img, resolution: int):
    """Centre-crop to a square, then resize to resolution x resolution (Lanczos) if needed."""
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    if w != h:
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if s != resolution:
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return img


def folder_images(folder: str | os.PathLike, resolution: int, *, labels_from_folders: bool = False,
                  channels: int = 3) -> Iterator[tuple[np.ndarray, int | None]]:
    """Every image under `folder` (sorted by path) as uint8 resolution x resolution x `channels`, with
    its class when `labels_from_folders` (the index of its first-level sub-folder, sorted)."""
    from PIL import Image

    from sidbench.data.image_files import folder_files

    root = Path(folder)
    files = folder_files(root)
    if not files:
        raise DataError(f"{root} holds no images")
    classes: dict[str, int] = {}
    if labels_from_folders:
        tops = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
        loose = [p for p in files if len(p.relative_to(root).parts) == 1]
        if loose or not tops:
            raise DataError(f"{root}: with labels from folders every image must be in a class folder "
                            f"({loose[0] if loose else 'no sub-folders'})")
        classes = {name: i for i, name in enumerate(tops)}
    for path in files:
        try:
            with Image.open(path) as img:
                img = _square(img.convert("L" if channels == 1 else "RGB"), resolution)
                pixels = np.asarray(img, dtype=np.uint8)
        except OSError as e:
            raise DataError(f"cannot read image {path}: {' '.join(str(e).split())}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        yield pixels, (classes[path.relative_to(root).parts[0]] if labels_from_folders else None)
