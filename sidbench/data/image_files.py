"""Image files as training data and evaluation sources both read them: folders and zips (EDM's
dataset zips: `00000/img00000000.png`, ..., plus a `dataset.json`), listed in sorted order of
their relative names so that a source always yields the same images in the same order, and one
file decoded to uint8 [H, W, C] (C = 1 grayscale, 3 colour). Here, in data/, because data flows
data -> trainer -> eval: the metrics' readers (`sidbench.eval.sources`) build on these.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from sidbench.errors import InputError, MissingInputError

#: File name endings read as images in folders and zips.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})


def decode_image(data: bytes | str | os.PathLike, name: str | None = None) -> np.ndarray:
    """One image file (path or bytes) as uint8 [H, W, C], C = 1 (grayscale) or 3 (colour)."""
    from PIL import Image

    label = name if name is not None else (os.fspath(data) if not isinstance(data, bytes) else "<bytes>")
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            mode = img.mode
            if mode in ("1", "L", "LA"):
                arr = np.asarray(img.convert("L"))[:, :, None]
            elif mode.startswith(("I", "F")):
                raise InputError(f"pixel mode {mode!r} is not 8-bit; convert the image to 8-bit first")
            else:
                arr = np.asarray(img.convert("RGB"))
    except ValueError as err:
        raise InputError(f"cannot use image {label}: {err}") from None
    except OSError as err:
        raise InputError(f"cannot read image {label}: {' '.join(str(err).split())}") from None
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") or "__MACOSX/" in name:
        return False
    return os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def folder_files(path: str | os.PathLike) -> list[Path]:
    """Image files under a folder (recursively), sorted by their path relative to it."""
    root = Path(path)
    if not root.is_dir():
        raise MissingInputError(f"image folder not found: {root}")
    found = [p for p in root.rglob("*") if p.is_file() and _is_image_name(p.relative_to(root).as_posix())]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def zip_members(path: str | os.PathLike) -> list[str]:
    """Image members of a zip, sorted by name (EDM dataset zips: `00000/img00000000.png`, ...)."""
    with zipfile.ZipFile(path) as zf:
        return sorted(n for n in zf.namelist() if not n.endswith("/") and _is_image_name(n))


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) back to float32 in [-1, 1]: x / 127.5 - 1 (the inverse of `to_uint8`'s scale)."""
    return x.to(torch.float32) / 127.5 - 1
