"""Checkpoints written atomically (temporary file, fsync, rename), so a kill never leaves a
half-written file where the last good one was."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class CheckpointError(RuntimeError):
    """A training checkpoint that is missing or unreadable; the message names the file."""


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load a training checkpoint written by `save_atomic` (tensors and plain containers only).

    `mmap=True` maps the tensors instead of reading them: for looking up a field of a checkpoint
    that may hold gigabytes of weights and optimiser state."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass resume=<run dir or MLflow run id> of a run that saved one")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable; say which and why
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete it to start over") from e
