"""Exponential moving averages of a network: the generator's (EDM's half-life and ramp-up), and
any a method keeps of its own (consistency distillation's target network, with a constant mu)."""
from __future__ import annotations

import copy

import torch


def ema_beta(batch: int, images_seen: int, halflife_kimg: float, rampup: float | None) -> float:
    """beta = 0.5 ** (batch / max(min(halflife, images_seen * rampup), 1e-8)), lengths in images.

    `images_seen` counts the images before the current batch, as EDM's and SiD's loops do (they
    update the average, then advance the counter): the first update copies the network. The
    ramp-up keeps the average short early on, when the generator still moves fast.
    """
    halflife = halflife_kimg * 1000
    if rampup is not None:
        halflife = min(halflife, images_seen * rampup)
    return 0.5 ** (batch / max(halflife, 1e-8))


class EMA:
    """A frozen copy of a network whose parameters trail the live ones."""

    def __init__(self, net: torch.nn.Module, halflife_kimg: float | None = None, rampup: float | None = 0.05,
                 beta: float | None = None) -> None:
        self.halflife_kimg = halflife_kimg
        self.rampup = rampup
        # A fixed rate per update, from the first one (consistency models' and progressive
        # distillation's published EMAs: 0.9999, 0.9999432189950708, 0 = no average); replaces
        # the half-life, whose conversion from a rate would round the published number.
        self.beta = beta
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    def update(self, net: torch.nn.Module, batch: int, images_seen: int) -> float:
        """Average with the fixed rate, else with EDM's half-life; `images_seen` before this batch."""
        if self.beta is not None:
            beta = self.beta
        elif self.halflife_kimg is None:
            raise ValueError("this average has no half-life and no rate; call blend(net, beta)")
        else:
            beta = ema_beta(batch, images_seen, self.halflife_kimg, self.rampup)
        self.blend(net, beta)
        return beta

    @torch.no_grad()
    def blend(self, net: torch.nn.Module, beta: float) -> None:
        """average <- beta * average + (1 - beta) * net."""
        # for-each kernels: one launch per group of tensors instead of one per parameter (the same
        # numbers as a lerp_ per parameter, bit for bit)
        ema, live = list(self.module.parameters()), [p.detach() for p in net.parameters()]
        if ema:
            torch._foreach_lerp_(ema, live, 1 - beta)
        # The networks' only buffers are constant resampling filters: copy, never average.
        buffers = list(zip(self.module.buffers(), net.buffers()))
        if buffers:
            torch._foreach_copy_([b for b, _ in buffers], [b for _, b in buffers])

    @torch.no_grad()
    def reset(self, net: torch.nn.Module) -> None:
        """Start the average again from `net` (a stage boundary may ask for it)."""
        self.blend(net, 0.0)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
