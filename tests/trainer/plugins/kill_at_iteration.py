"""Test plugin: SIGKILL this process when the trainer starts iteration $SIDBENCH_TEST_KILL_AT.

Loaded through $SIDBENCH_PLUGINS, so a run is killed at a known iteration instead of when some
file appears: the resume tests do not depend on timing.
"""
import os
import signal

from sidbench.trainer.loop import Trainer

KILL_AT = int(os.environ["SIDBENCH_TEST_KILL_AT"])
_enter_stages = Trainer._enter_stages


def _enter_stages_or_die(self: Trainer) -> dict:
    if self.progress.iteration == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return _enter_stages(self)


Trainer._enter_stages = _enter_stages_or_die
