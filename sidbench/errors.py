"""The errors a user can cause or fix, shown by the command line as one line without a traceback.

Every such error derives from `UserError` (with the built-in type it also is: a bad value is still a
ValueError); the command line catches that base and nothing else, so a programming error keeps its
traceback. A leaf module (it imports nothing of sidbench), so that every room can raise them.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user named or set is unusable; the message (one line) says which, why and what
    to do. `exit_code`: 2 for a bad command line (unknown names, bad values), 1 for a failure while
    running."""

    exit_code = 1


class InputError(UserError, ValueError):
    """An input the user named (an image folder, a zip, an .npz, a statistics file, a key) is unusable."""


class MissingInputError(InputError, FileNotFoundError):
    """An input the user named does not exist."""


def follows_another_rank(e: BaseException) -> bool:
    """A collective that failed because another DDP process ended (gloo/NCCL report the closed
    connection): on a process other than rank 0 that is never the first error of the run."""
    import torch.distributed as dist

    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe")))
