"""Image sources for evaluation, all reduced to one stream of uint8 batches [B, C, H, W].

A source is a folder or a zip of image files (EDM's dataset zips: `00000/img00000000.png`, ...,
plus a `dataset.json` that is ignored here), an `.npz` holding a uint8 image array, or a generator
callable (`SampleFn`, through `generated_batches`).

Image files are read by clean-fid's own reader (`cleanfid.utils.ResizeDataset`, the one behind
its `get_folder_features`, arXiv:2104.11222) at native resolution: decoded by PIL and converted to
RGB (grayscale repeated), exactly as clean-fid feeds its detector; the detector then resizes as
its mode requires (`sidbench.eval.fid`). What clean-fid lacks is added here: a file order that
does not depend on the process (sorted relative names, so the first `num_samples` images are
always the same ones; clean-fid lists a zip through a `set`), `.npz` arrays, generators, and
one-line errors that name the file. An `.npz` keeps its channels as stored (1 or 3).

`compute_stats` turns a stream into Gaussian statistics (float64 mean, covariance with n - 1)
without holding every feature vector in memory.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from sidbench.data.image_files import IMAGE_EXTENSIONS, folder_files, zip_members
from sidbench.eval.images import SampleFn, generated_batches
from sidbench.eval.protocol import DEFAULT_BATCH_SIZE
from sidbench.errors import InputError, MissingInputError

#: Keys tried, in order, for the image array of an `.npz` (then: its only array).
NPZ_IMAGE_KEYS = ("images", "arr_0", "samples", "x")

#: A feature extractor: uint8 images [B, 3, H, W] -> float features [B, D] (tensor or array).
FeatureExtractor = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


def _limited(batches: Iterable[torch.Tensor], num_samples: int | None, source: str) -> Iterator[torch.Tensor]:
    """Stop after `num_samples` images; a source holding fewer is an error, not a smaller sample."""
    if num_samples is None:
        yield from batches
        return
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    seen = 0
    for batch in batches:
        take = min(batch.shape[0], num_samples - seen)
        yield batch[:take]
        seen += take
        if seen == num_samples:
            return
    raise InputError(f"{source} holds only {seen} images, fewer than the {num_samples} requested")


# ------------------------------------------------------------------------------------------------
# Folders and zips, through clean-fid's reader


def image_files(path: str | os.PathLike) -> tuple[list[str], str | None]:
    """The image files of a folder or `.zip`, sorted by relative name, and the zip (None for a
    folder): the arguments clean-fid's reader takes."""
    path = Path(path)
    if path.is_dir():
        files, archive = [str(f) for f in folder_files(path)], None
    else:
        if not path.is_file():
            raise MissingInputError(f"image zip not found: {path}")
        if path.suffix.lower() != ".zip":  # clean-fid tells a zip by its name
            raise InputError(f"unsupported image source {path}: expected a folder, an .npz or a .zip")
        try:
            files, archive = zip_members(path), str(path)
        except zipfile.BadZipFile:
            raise InputError(f"not a zip archive: {path}") from None
    if not files:
        kind = "zip" if archive else "folder"
        raise InputError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {kind} {path}")
    return files, archive


def file_batches(
    path: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE, num_samples: int | None = None
) -> Iterator[torch.Tensor]:
    """uint8 RGB batches [B, 3, H, W] of the images in a folder or `.zip`, in sorted order, read
    by clean-fid at native resolution. All images must have one size (as clean-fid requires)."""
    from cleanfid.utils import ResizeDataset

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    files, archive = image_files(path)
    if num_samples is not None:
        if len(files) < num_samples:
            raise InputError(f"{path} holds only {len(files)} images, fewer than the {num_samples} requested")
        files = files[:num_samples]

    class Reader(ResizeDataset):  # clean-fid's reader, naming the file it cannot read
        def __getitem__(self, i: int) -> torch.Tensor:
            try:
                return super().__getitem__(i)
            except (OSError, ValueError) as err:
                where = f"{files[i]} in {archive}" if archive else files[i]
                raise InputError(f"cannot read image {where}: {' '.join(str(err).split())}") from None

    def stack(images: list[torch.Tensor]) -> torch.Tensor:
        sizes = sorted({tuple(t.shape[1:]) for t in images})
        if len(sizes) > 1:
            raise InputError(f"{path} holds images of several sizes ({sizes}); score one resolution at a time")
        return torch.stack(images)

    # "legacy_tensorflow": clean-fid's reader without resizing; values are float 0..255 integers
    loader = torch.utils.data.DataLoader(Reader(files, mode="legacy_tensorflow", fdir=archive),
                                         batch_size=batch_size, collate_fn=stack)
    return (batch.round().to(torch.uint8) for batch in loader)  # listed now, read lazily


# ------------------------------------------------------------------------------------------------
# .npz arrays


def _npz_key(files: list[str], path: Path, key: str | None) -> str:
    if key is not None:
        if key not in files:
            raise InputError(f"{path} has no array {key!r}; it holds {files}")
        return key
    for k in NPZ_IMAGE_KEYS:
        if k in files:
            return k
    if len(files) == 1:
        return files[0]
    raise InputError(
        f"cannot tell which array of {path} holds the images ({files}); name one of {list(NPZ_IMAGE_KEYS)}"
    )


def to_nchw(images: np.ndarray, layout: str | None = None, source: str = "array") -> np.ndarray:
    """uint8 images as [N, C, H, W] from [N, H, W] (grayscale), NHWC or NCHW.

    The layout is detected from where a channel axis of size 1 or 3 sits. When both ends could be
    channels (a [N, 3, H, 3] array) NHWC is assumed, the layout numpy and PIL write; pass `layout`
    to decide explicitly.
    """
    if images.dtype != np.uint8:
        raise InputError(
            f"{source} holds {images.dtype} images; expected uint8 (0..255, see sidbench.eval.images.to_uint8)"
        )
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise InputError(f"{source} holds an array of shape {list(images.shape)}; expected [N, H, W], NHWC or NCHW")
    if layout is None:
        last, second = images.shape[-1] in (1, 3), images.shape[1] in (1, 3)
        if last:
            layout = "NHWC"
        elif second:
            layout = "NCHW"
        else:
            raise InputError(
                f"{source} has shape {list(images.shape)}: no channel axis of size 1 or 3 at position 1 or 3"
            )
    layout = layout.upper()
    if layout == "NHWC":
        return images.transpose(0, 3, 1, 2)
    if layout == "NCHW":
        return images
    raise ValueError(f"unknown layout {layout!r}; use 'NHWC' or 'NCHW'")


def npz_batches(
    path: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_samples: int | None = None,
    *,
    key: str | None = None,
    layout: str | None = None,
) -> Iterator[torch.Tensor]:
    """uint8 batches [B, C, H, W] of the image array in an `.npz` (key `images`, `arr_0`, ...)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"image array not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arr = data[_npz_key(list(data.files), path, key)]
    except (OSError, zipfile.BadZipFile) as err:
        raise InputError(f"cannot read {path} as .npz: {' '.join(str(err).split())}") from None
    arr = to_nchw(arr, layout, source=str(path))
    if arr.shape[1] not in (1, 3):
        raise InputError(f"{path} holds images with {arr.shape[1]} channels; expected 1 or 3")

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, arr.shape[0], batch_size):
            yield torch.from_numpy(np.ascontiguousarray(arr[start : start + batch_size]))

    return _limited(batches(), num_samples, f"array {path}")


# ------------------------------------------------------------------------------------------------
# Dispatch


def image_batches(
    source: str | os.PathLike | SampleFn,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_samples: int | None = None,
    **generator_kwargs,
) -> Iterator[torch.Tensor]:
    """uint8 batches [B, C, H, W] from a folder, an `.npz`, a `.zip` or a generator callable.

    A callable is sampled through `generated_batches`: `num_samples` and `shape` are then required,
    and `label_dim`, `device`, `seed`, `label_mode` pass through. For files, `num_samples` takes
    the first images in sorted order and is an error when the source holds fewer.
    """
    if callable(source):
        if num_samples is None or "shape" not in generator_kwargs:
            raise InputError("a generator source needs num_samples and shape=(C, H, W)")
        return generated_batches(source, num_samples, batch_size, **generator_kwargs)
    if generator_kwargs:
        raise TypeError(f"arguments {sorted(generator_kwargs)} apply to generator sources only")
    path = Path(source).expanduser()
    if path.is_dir() or path.suffix.lower() == ".zip":
        return file_batches(path, batch_size, num_samples)
    if not path.exists():
        raise MissingInputError(f"image source not found: {path} (expected a folder, an .npz or a .zip)")
    if path.suffix.lower() == ".npz":
        return npz_batches(path, batch_size, num_samples)
    raise InputError(f"unsupported image source {path}: expected a folder, an .npz or a .zip")


# ------------------------------------------------------------------------------------------------
# Statistics


class RunningStats:
    """Mean and covariance of a stream of feature batches, in float64, merged batch by batch.

    Each batch is centred on its own mean and merged with the pairwise update of Chan et al., so
    features with a large common offset lose no precision (unlike accumulating sum x x^T).
    """

    def __init__(self) -> None:
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().double().numpy()
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise InputError(f"features must be [B, D], got shape {list(f.shape)}")
        if f.shape[0] == 0:
            return
        if self._mean is not None and f.shape[1] != self._mean.shape[0]:
            raise InputError(f"feature dimension changed from {self._mean.shape[0]} to {f.shape[1]}")
        if not np.isfinite(f).all():
            raise InputError("the feature extractor returned non-finite values")
        nb = f.shape[0]
        mean_b = f.mean(axis=0)
        centred = f - mean_b
        m2_b = centred.T @ centred
        if self._mean is None:
            self.n, self._mean, self._m2 = nb, mean_b, m2_b
            return
        total = self.n + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / total)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.n * nb / total)
        self.n = total

    @property
    def mu(self) -> np.ndarray:
        if self._mean is None:
            raise InputError("no features seen")
        return self._mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        if self._m2 is None or self.n < 2:
            raise InputError(f"need at least 2 images for a covariance, got {self.n}")
        s = self._m2 / (self.n - 1)
        return (s + s.T) / 2


def as_rgb(batch: torch.Tensor) -> torch.Tensor:
    """Check a uint8 batch [B, C, H, W] and repeat grayscale (C = 1) to 3 channels."""
    if not isinstance(batch, torch.Tensor) or batch.dtype != torch.uint8 or batch.ndim != 4:
        desc = f"{batch.dtype} {list(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise InputError(f"expected uint8 image batches [B, C, H, W], got {desc}")
    if batch.shape[1] == 1:
        return batch.expand(-1, 3, -1, -1)
    if batch.shape[1] != 3:
        raise InputError(f"expected 1 or 3 channels, got {batch.shape[1]}")
    return batch


def accumulate_features(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> RunningStats:
    """Run `extractor` over a uint8 stream (grayscale repeated to RGB) and accumulate statistics."""
    stats = RunningStats()
    for batch in batches:
        rgb = as_rgb(batch)
        feats = extractor(rgb)
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().cpu().double().numpy()
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] != rgb.shape[0]:
            raise InputError(
                f"feature extractor returned shape {list(feats.shape)} for {rgb.shape[0]} images; expected [B, D]"
            )
        stats.update(feats)
        if on_batch is not None:
            on_batch(rgb.shape[0])
    return stats


def compute_stats(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) in float64 of the features of a uint8 image stream (covariance n - 1)."""
    stats = accumulate_features(batches, extractor, on_batch=on_batch)
    return stats.mu, stats.sigma
