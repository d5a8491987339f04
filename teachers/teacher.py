"""A loaded teacher: a frozen EDM denoiser D(x, sigma, labels) and where it came from.

Where the weights came from (the shipped digits teacher, an EDM pickle, a user's file) is
invisible after loading: every method sees the same object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Teacher:
    net: torch.nn.Module
    #: EDM-form constructor arguments (`precond`, `model_type`, and the network's own keywords)
    constructor: dict[str, Any]
    #: where the weights came from (a path or an address), for the run's records
    source: str
    #: what the card says about the teacher (measured or published metric values, sampler steps)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return int(self.constructor["img_resolution"])

    @property
    def channels(self) -> int:
        return int(self.constructor["img_channels"])

    @property
    def label_dim(self) -> int:
        return int(self.constructor.get("label_dim", 0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    def copy_network(self, **overrides: Any) -> torch.nn.Module:
        """A trainable copy initialised with the teacher's weights; `overrides` change constructor
        arguments that carry no weights (e.g. `dropout`)."""
        from sidbench.teachers.networks import build_edm_network

        net = build_edm_network({**self.constructor, **overrides})
        net.load_state_dict(self.net.state_dict(), strict=True)
        param = next(self.net.parameters())
        return net.to(device=param.device).train().requires_grad_(True)

    def init_generator(self, **overrides: Any) -> torch.nn.Module:
        """The one-step generator's starting point: by default a copy of the teacher (SiD, DMD)."""
        return self.copy_network(**overrides)
