"""One seeding scheme: a random stream is a function of its position, never of history.

`mix(*key)` turns a tuple of integers (run seed, iteration, update, micro-batch, ...) into a
63-bit seed through NumPy's `SeedSequence`, which hashes its entropy with a fixed, documented
mixing function. Unlike Python's `hash()` of a tuple, the result is the same in every process,
Python version and platform, so DDP ranks and resumed runs agree on every draw.
"""
from __future__ import annotations

import numpy as np
import torch


def mix(*key: int) -> int:
    """A seed in [0, 2^63) determined by `key` alone (negative integers are taken mod 2^64)."""
    entropy = [int(k) % 2**64 for k in key]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_torch(*key: int) -> None:
    """Seed torch's global CPU and CUDA generators from `key` (for code that draws with
    `torch.randn` and friends, as method losses do)."""
    torch.manual_seed(mix(*key))


def generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private torch generator seeded from `key` (for draws that must not disturb the global stream)."""
    return torch.Generator(device=device).manual_seed(mix(*key))
