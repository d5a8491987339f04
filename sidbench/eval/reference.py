"""Reference statistics for FID: EDM's `.npz` files (keys `mu` [D] and `sigma` [D, D]); the same
format holds other Frechet distances' statistics (FD-DINOv2), marked with the metric's name
(key `metric`) so that one is never taken for another.

The files are small (a 2048-vector and a 2048x2048 matrix) and every FID needs one, so they are
validated on load: a truncated download or a hand-made file with a transposed or NaN-ridden
covariance should fail here, with the file's name in a one-line message, rather than produce a
plausible-looking FID later.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from sidbench.atomic import atomic_path
from sidbench.errors import InputError, MissingInputError, UserError

#: Relative tolerance on |sigma - sigma^T|, against the largest entry of sigma. Covariances written
#: by a float64 matrix product are symmetric to round-off only, never exactly.
SYMMETRY_RTOL = 1e-6


class ReferenceStatsError(UserError, ValueError):
    """A reference statistics file is unreadable or does not hold valid Gaussian statistics."""


def _fail(path: str | os.PathLike, what: str) -> ReferenceStatsError:
    return ReferenceStatsError(f"invalid reference statistics {os.fspath(path)}: {what}")


def validate_stats(mu: np.ndarray, sigma: np.ndarray, source: str | os.PathLike = "<memory>") -> None:
    """Check shapes ([D] and [D, D]), finiteness and symmetry; raise ReferenceStatsError if not."""
    if mu.ndim != 1:
        raise _fail(source, f"'mu' must have shape [D], got {list(mu.shape)}")
    d = mu.shape[0]
    if d == 0:
        raise _fail(source, "'mu' is empty")
    if sigma.shape != (d, d):
        raise _fail(source, f"'sigma' must have shape [{d}, {d}] to match 'mu', got {list(sigma.shape)}")
    if not np.isfinite(mu).all():
        raise _fail(source, f"'mu' holds {int((~np.isfinite(mu)).sum())} non-finite values")
    if not np.isfinite(sigma).all():
        raise _fail(source, f"'sigma' holds {int((~np.isfinite(sigma)).sum())} non-finite values")
    scale = float(np.abs(sigma).max())
    asym = float(np.abs(sigma - sigma.T).max())
    if asym > SYMMETRY_RTOL * max(scale, 1e-30):
        raise _fail(source, f"'sigma' is not symmetric (max |sigma - sigma^T| = {asym:.3g}, max |sigma| = {scale:.3g})")


def load_reference_stats(path: str | os.PathLike, metric: str = "fid") -> tuple[np.ndarray, np.ndarray]:
    """Read and validate an `.npz` of statistics for `metric`; returns (mu [D], sigma [D, D]) in
    float64. A file without a `metric` key (EDM's) holds FID statistics."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"FID reference statistics not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            missing = [k for k in ("mu", "sigma") if k not in keys]
            if missing:
                raise _fail(path, f"missing key(s) {missing}; found {sorted(keys)}")
            mu, sigma = data["mu"], data["sigma"]
            holds = str(data["metric"]) if "metric" in keys else "fid"
    except ReferenceStatsError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        # np.load raises ValueError for object arrays (pickles) and files that are no npz at all.
        reason = " ".join(str(err).split()) or type(err).__name__
        raise _fail(path, f"not a readable .npz ({reason})") from None
    if holds != metric:
        raise _fail(path, f"it holds {holds} statistics, not {metric}")
    for key, arr in (("mu", mu), ("sigma", sigma)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise _fail(path, f"'{key}' has dtype {arr.dtype}, expected a real number type")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    validate_stats(mu, sigma, path)
    return mu, sigma


def save_reference_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, metric: str = "fid") -> Path:
    """Write statistics in EDM's format (`np.savez` with `mu` and `sigma`, float64); another
    metric's (not `fid`) carry its name under `metric`.

    A missing `.npz` suffix is added (as `np.savez` would do); the real path is returned. The file
    is written next to its destination and renamed, so a crash never leaves a half-written file.
    """
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    validate_stats(mu, sigma, path)
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        extra = {} if metric == "fid" else {"metric": np.array(metric)}
        np.savez(f, mu=mu, sigma=sigma, **extra)  # to an open file: np.savez would append .npz to a name
    return path


def card_references(shipped_only: bool = False) -> dict[str, str]:
    """{dataset key: the address of its reference statistics}, read from the dataset cards
    (`dataset.ref_stats`), the one place these addresses are written: the shipped cards (EDM's
    statistics), then the user's own (`$SIDBENCH_CONFIG_PATH`) unless `shipped_only`."""
    from sidbench.config import group_config, group_files

    cards = group_files("dataset")
    if shipped_only:
        from importlib.resources import files

        shipped = Path(str(files("sidbench.conf"))) / "dataset"
        cards = {name: path for name, path in cards.items() if path.parent == shipped}
    return {name: str(ref) for name in cards if (ref := group_config("dataset", name).get("ref_stats"))}


def reference_stats_url(key: str) -> str:
    """Address of the statistics for a dataset key (`ffhq64`) or a file stem (`ffhq-64x64`)."""
    refs = card_references()
    if key in refs:
        return refs[key]
    stems = {Path(url).stem: url for url in refs.values()}
    if key in stems:
        return stems[key]
    raise InputError(f"unknown FID reference {key!r}: use a dataset key ({', '.join(refs)}), "
                     "a URL or the path of an .npz with 'mu' and 'sigma'")


def _fetch(url: str, *, cache_dir: str | os.PathLike | None, progress: bool) -> Path:
    # Imported here: the downloader (and anything it pulls in) stays out of import time.
    from sidbench.download import cached_download

    return cached_download(url, cache_dir=cache_dir, progress=progress)


def reference_stats_for(
    ref: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Statistics named by a dataset key (`ffhq64`), an `http(s)://` address or a local `.npz` path.

    Keys and addresses are fetched through the project's download cache; an existing local file
    always wins, so an offline machine can be pointed at a copy.
    """
    text = os.fspath(ref)
    if text.startswith(("http://", "https://")):
        return load_reference_stats(_fetch(text, cache_dir=cache_dir, progress=progress))
    path = Path(text).expanduser()
    if path.is_file():
        return load_reference_stats(path)
    looks_like_path = path.suffix == ".npz" or os.sep in text or (os.altsep is not None and os.altsep in text)
    if looks_like_path:
        raise MissingInputError(f"FID reference statistics not found: {path}")
    url = reference_stats_url(text)
    return load_reference_stats(_fetch(url, cache_dir=cache_dir, progress=progress))
