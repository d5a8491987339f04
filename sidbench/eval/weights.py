"""Detector weights beyond FID's Inception: where a file comes from, how it is checked, and the one
way to fetch it (`detector_weights`).

A detector's weights are a plain file of tensors (a PyTorch state dict), never code: each metric
builds its network itself and loads the file with `torch.load(weights_only=True)`, which refuses
anything but tensors and containers. The file is found, in order, at a configured path (an `eval.*`
setting), at the path in an environment variable, or in the project's download cache
(`sidbench.download`), fetched from its published address and checked against its SHA-256. Where
the full SHA-256 is not recorded here, the digest measured at the first download is printed on
one line and recorded beside the file, so every later use is checked against it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: what it is, its address, its name in the cache, how to check it."""

    what: str  #: in messages, e.g. "DINOv2 ViT-L/14 weights"
    url: str
    filename: str
    sha256: str | None  #: the full digest, when known; else the first download's is recorded
    env: str  #: environment variable naming a local copy
    setting: str  #: the run setting naming a local copy, e.g. "eval.dinov2_path"
    sha256_prefix: str | None = None  #: the digest's first hex digits, checked when the full one is unknown


def _missing(spec: WeightsFile, path: Path, origin: str) -> Exception:
    from sidbench.download import DownloadError

    return DownloadError(f"{spec.what} not found at {path} ({origin}); download {spec.url} and put the file there",
                         url=spec.url, path=path)


def detector_weights(spec: WeightsFile, path: str | os.PathLike | None = None, *,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The local path of `spec`'s file: `path` (a setting), else `$<spec.env>`, else the download
    cache (downloading it there if needed). A named file that does not exist is an error, never
    replaced by a download; every failure is one line naming the address and where to put a copy."""
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            raise _missing(spec, local, f"the configured {spec.setting}")
        return local
    env = os.environ.get(spec.env, "").strip()
    if env:
        local = Path(env).expanduser()
        if not local.is_file():
            raise _missing(spec, local, f"named by ${spec.env}")
        return local
    from sidbench.download import ChecksumError, cached_download, default_cache_dir, sha256_file

    cached = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / spec.filename
    had_record = cached.with_name(cached.name + ".sha256").is_file()
    local = cached_download(spec.url, spec.filename, sha256=spec.sha256, cache_dir=cache_dir, progress=progress,
                            hint=f"set {spec.setting}=<file> or ${spec.env}")
    if spec.sha256 is None and not had_record:
        digest = sha256_file(local)
        if spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
            raise ChecksumError(f"{local} has SHA-256 {digest}, which does not begin with the published "
                                f"{spec.sha256_prefix}; delete it to download it again from {spec.url}",
                                url=spec.url, path=local)
        print(f"warning: sidbench records no SHA-256 for {spec.filename}; its first copy has {digest} (kept beside it "
              "and checked on every later use)", file=sys.stderr, flush=True)
    return local


def load_state_dict(path: str | os.PathLike, spec: WeightsFile) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read with `weights_only=True` (no code in the file runs);
    an unreadable file is one line naming it and where to fetch a fresh copy."""
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file ends in the same one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        from sidbench.errors import InputError

        raise InputError(f"cannot read {spec.what} from {path} ({first}); fetch a fresh copy from {spec.url}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        from sidbench.errors import InputError

        raise InputError(f"{path} holds no state dict of tensors; expected {spec.what} ({spec.url})")
    return state
