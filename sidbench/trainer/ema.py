"""Exponential moving average of the generator, with EDM's half-life and ramp-up."""
from __future__ import annotations

import copy

import torch


def ema_beta(batch: int, images_seen: int, halflife_kimg: float, rampup: float | None) -> float:
    """beta = 0.5 ** (batch / max(min(halflife, images_seen * rampup), 1e-8)), lengths in images.

    The ramp-up keeps the average short early on, when the generator still moves fast.
    """
    halflife = halflife_kimg * 1000
    if rampup is not None:
        halflife = min(halflife, images_seen * rampup)
    return 0.5 ** (batch / max(halflife, 1e-8))


class EMA:
    """A frozen copy of a network whose parameters trail the live ones."""

    def __init__(self, net: torch.nn.Module, halflife_kimg: float, rampup: float | None = 0.05) -> None:
        self.halflife_kimg = halflife_kimg
        self.rampup = rampup
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module, batch: int, images_seen: int) -> float:
        beta = ema_beta(batch, images_seen, self.halflife_kimg, self.rampup)
        for p_ema, p in zip(self.module.parameters(), net.parameters()):
            p_ema.lerp_(p.detach(), 1 - beta)
        # The networks' only buffers are constant resampling filters: copy, never average.
        for b_ema, b in zip(self.module.buffers(), net.buffers()):
            b_ema.copy_(b)
        return beta

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
