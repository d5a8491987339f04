"""Stopping a run when asked (Ctrl-C's SIGINT, or SIGTERM from a scheduler, a bench or torchrun
passing either on): at the end of the iteration under way, with a checkpoint, so that nothing
trained is lost and the run resumes exactly. A second signal stops at once."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """The run stopped because it was asked to; `message` says what can be resumed."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as a shell reports a process ended by signal N


class StopRequest:
    """`signum` of the first stop signal received while active (None: none)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handler(self, signum: int, _frame: object) -> None:
        if self.signum is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signum = signum


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Catch STOP_SIGNALS for the duration (main thread only; elsewhere nothing is caught)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handler) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
