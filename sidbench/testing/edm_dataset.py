"""Small EDM dataset zips for tests of the real-image readers, written without
`sidbench.data.make_dataset` so that a reader is checked against EDM's layout, not against our
writer: 00000/img00000000.png, ... and dataset.json with `{"labels": [[name, class], ...]}` or
`{"labels": null}` (docs/data.md). Image i is flat at 5 i, so a drawn pixel tells which image it is."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def flat_png(value: int, shape: tuple[int, int, int]) -> bytes:
    """A PNG of shape (C, H, W) whose pixels all equal `value` (grayscale when C is 1)."""
    c, h, w = shape
    array = np.full((h, w, c), value, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array[:, :, 0] if c == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def flat_edm_zip(path: Path, count: int, shape: tuple[int, int, int], labels: bool) -> Path:
    """`count` flat images (image i at 5 i; class i % 3 when `labels`) in EDM's zip layout, at `path`."""
    names = [f"00000/img{i:08d}.png" for i in range(count)]
    with zipfile.ZipFile(path, "w") as z:
        for i, name in enumerate(names):
            z.writestr(name, flat_png(5 * i, shape))
        z.writestr("dataset.json", json.dumps({"labels": [[n, i % 3] for i, n in enumerate(names)] if labels else None}))
    return path
