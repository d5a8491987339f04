"""The errors a user can cause or fix, shown as one line without a traceback."""
from __future__ import annotations

from sidbench.config import ConfigError
from sidbench.data.real import DataError
from sidbench.download import DownloadError
from sidbench.methods.baselines.distance import LPIPSUnavailableError
from sidbench.eval.reference import ReferenceStatsError
from sidbench.input_errors import InputError
from sidbench.registry import PluginNotFoundError, UnknownNameError
from sidbench.teachers.edm_pickle import EDMCheckpointError
from sidbench.teachers.load import TeacherLoadError
from sidbench.trainer.checkpoint import CheckpointError
from sidbench.trainer.loop import NonFiniteLossError


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, UnknownNameError, DataError, DownloadError, ReferenceStatsError, EDMCheckpointError, TeacherLoadError, CheckpointError, NonFiniteLossError,
    InputError, LPIPSUnavailableError, PluginNotFoundError,
)


def follows_another_rank(e: BaseException) -> bool:
    """A collective that failed because another DDP process ended (gloo/NCCL report the closed
    connection): on a process other than rank 0 that is never the first error of the run."""
    import torch.distributed as dist

    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe")))


def exit_code(e: BaseException) -> int:
    """2 for a bad command line (unknown names, bad values), 1 for a failure while running."""
    return 2 if isinstance(e, (ConfigError, UnknownNameError, PluginNotFoundError)) else 1
