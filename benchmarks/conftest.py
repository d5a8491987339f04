"""Fixtures shared by the benchmarks."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test, as the benchmarks measure (other jobs share the cores:
    one thread gives steadier numbers), then back to what it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
