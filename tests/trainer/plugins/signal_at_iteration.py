"""Test plugin: when the trainer starts iteration $SIDBENCH_TEST_SIGNAL_AT, send signal
$SIDBENCH_TEST_SIGNAL (a name: INT, TERM) to $SIDBENCH_TEST_SIGNAL_TO: `self`, or `launcher` (the
process that started this one: what a terminal's Ctrl-C reaches first under torchrun). Only rank 0
sends it, once. With $SIDBENCH_TEST_SIGNAL_AT=load it is sent while the teacher loads instead,
before the training loop catches stop signals. Deterministic where waiting for a file is not."""
import os
import signal

import sidbench.run
from sidbench.trainer.loop import Trainer

AT = os.environ["SIDBENCH_TEST_SIGNAL_AT"]
SIGNAL = getattr(signal, "SIG" + os.environ.get("SIDBENCH_TEST_SIGNAL", "INT"))
TARGET = os.environ.get("SIDBENCH_TEST_SIGNAL_TO", "self")
_sent = False


def _send() -> None:
    global _sent
    if _sent or os.environ.get("RANK", "0") != "0":
        return
    _sent = True
    os.kill(os.getppid() if TARGET == "launcher" else os.getpid(), SIGNAL)


if AT == "load":
    _load_teacher = sidbench.run.load_teacher

    def _load_and_signal(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        _send()
        return _load_teacher(*args, **kwargs)

    sidbench.run.load_teacher = _load_and_signal
else:
    _enter_stages = Trainer._enter_stages

    def _enter_stages_and_signal(self: Trainer) -> dict:
        if self.progress.iteration == int(AT):
            _send()
        return _enter_stages(self)

    Trainer._enter_stages = _enter_stages_and_signal
