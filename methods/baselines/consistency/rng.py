"""The random state two network calls share, so that both drop the same units (dropout).

Consistency losses compare one network at two inputs; with dropout active, the comparison is only
a consistency condition if both calls use the same mask (ECT, arXiv 2406.14548, and sCM, arXiv
2410.11081, say so; their code restores the generator's state before the second call). Dropout
draws from the generator of the device the network runs on, so a state holds the CPU generator's
and, on CUDA, that device's generator's state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RandomState", "capture", "restore"]


@dataclass(frozen=True)
class RandomState:
    """The generators' states at one moment: the CPU one and, on CUDA, the device's."""

    cpu: Tensor
    cuda: Tensor | None
    device: torch.device


def capture(device: torch.device | str) -> RandomState:
    """The current state of the generators a network on `device` draws its dropout masks from."""
    device = torch.device(device)
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return RandomState(torch.get_rng_state(), cuda, device)


def restore(state: RandomState) -> None:
    """Puts the generators back into `state`: the next call draws the masks the captured one drew."""
    torch.set_rng_state(state.cpu)
    if state.cuda is not None:
        torch.cuda.set_rng_state(state.cuda, state.device)
