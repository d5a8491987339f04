"""Test plugin: from iteration $SIDBENCH_TEST_STORE_FAILS_AT on, every write to the MLflow store
fails as SQLite fails on a store that became read-only ("attempt to write a readonly database"),
which a test run as root cannot provoke with file permissions."""
import os

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sidbench.trainer.loop import Trainer

AT = int(os.environ["SIDBENCH_TEST_STORE_FAILS_AT"])
_enter_stages = Trainer._enter_stages


def _readonly(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database")


def _enter_stages_or_break_store(self: Trainer) -> dict:
    if self.progress.iteration == AT:
        MlflowClient.log_batch = _readonly
        MlflowClient.log_artifact = _readonly
    return _enter_stages(self)


Trainer._enter_stages = _enter_stages_or_break_store
