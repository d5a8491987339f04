"""Checkpoints written atomically (temporary file, fsync, rename), so a kill never leaves a
half-written file where the last good one was."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sidbench.atomic import atomic_path
from sidbench.errors import UserError


def save_atomic(obj: Any, path: str | Path) -> Path:
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
    return Path(path)


class CheckpointError(UserError, RuntimeError):
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
