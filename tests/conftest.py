"""Shared fixtures: a tiny random EDM teacher in our file format, and an isolated run folder."""
from __future__ import annotations

import os
from pathlib import Path

# Test networks are tiny: one thread per process is fastest, and lets pytest-xdist use both cores
# (subprocesses started by tests inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

from sidbench.testing.tiny import make_tiny_teacher


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 8x8 SongUNet teacher (unconditional), the size of the digits data."""
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_cond_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny-cond.safetensors", label_dim=10)


@pytest.fixture
def run_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs and the MLflow store go under tmp_path; nothing touches the user's folders."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def refused(run_env: Path):
    """f(*overrides) -> the one line with which `sidbench run` refuses these settings before
    anything starts (composing them, then `sidbench.schema.validate_run_config`)."""
    from sidbench.config import ConfigError, compose
    from sidbench.schema import validate_run_config

    def check(*overrides: str) -> str:
        with pytest.raises(ConfigError) as info:
            validate_run_config(compose(list(overrides)))
        message = str(info.value)
        assert "\n" not in message, message
        return message

    return check


@pytest.fixture
def kill_env():
    """f(iteration, plugins="") -> the environment of a `sidbench run` process that SIGKILLs itself
    when the trainer starts that iteration (tests/trainer/plugins/kill_at_iteration.py)."""
    here = str(Path(__file__).parent / "trainer" / "plugins")

    def env(iteration: int, plugins: str = "") -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                "SIDBENCH_PLUGINS": ",".join(filter(None, [plugins, "kill_at_iteration"])),
                "SIDBENCH_TEST_KILL_AT": str(iteration), "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}

    return env


class RunTemp:
    """An empty temp folder for a `sidbench run` subprocess (pass `env` to it as TMPDIR)."""

    def __init__(self, path: Path) -> None:
        path.mkdir()
        self.path = path
        self.env = {"TMPDIR": str(path)}

    def left(self) -> list[str]:
        """What the run left there, TorchInductor's cache (kept across runs by design) aside."""
        return sorted(p.name for p in self.path.iterdir() if not p.name.startswith("torchinductor_"))


@pytest.fixture
def run_temp(run_env: Path) -> RunTemp:
    return RunTemp(run_env / "temp")
