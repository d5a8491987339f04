"""Processes that end with the process that started them.

torchrun starts each DDP worker in a session of its own, so a signal to the process group of
`sidbench run` (a terminal's Ctrl-C, a bench's kill of its cells) never reaches them, and a
SIGKILLed parent leaves them running. On Linux a child can ask the kernel for a signal when its
parent dies (prctl PR_SET_PDEATHSIG): the workers of `sidbench run`, the `sidbench run` of a bench
cell and the server of `sidbench ui` do.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

#: Set by a parent for the children it starts: its pid. A child that finds it asks to die with it.
PARENT_ENV = "SIDBENCH_DIE_WITH"
PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def death_signal_setup(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A function that asks for `sig` when the calling process's parent dies (a no-op where the
    platform cannot). libc is looked up here, so the function may run between fork and exec."""
    prctl = _prctl()

    def setup() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return setup


def children_die_with_me(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) telling the children started with it to die with this process."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """In a child started with `children_die_with_me`: be SIGKILLed when that parent dies (a DDP
    worker cannot finish without its peers and launcher), and leave now if it already has."""
    parent = os.environ.pop(PARENT_ENV, None)  # not for this process's own children
    if not parent:
        return
    death_signal_setup(signal.SIGKILL)()
    if os.getppid() != int(parent):  # it died before we asked
        os._exit(1)
