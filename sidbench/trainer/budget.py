"""The compute budget that ends a run, and evaluation points placed in its unit.

Units: `kimg` (generator images seen, thousands), `passes` (network passes in images, see
`sidbench.trainer.compute`), `flops`, and `seconds` (training time, evaluation excluded). A run
stops after the first iteration at which its counter reaches the value, so it overshoots by less
than one iteration's cost, and two methods given the same budget end within one iteration of
each other. `passes` and `flops` do not depend on the machine: with positional seeding, a
budgeted run draws the same curve everywhere.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

UNITS = ("kimg", "passes", "flops", "seconds")


@dataclass(frozen=True)
class Budget:
    unit: str
    value: float

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unknown budget unit {self.unit!r}; use one of {', '.join(UNITS)}")
        if not self.value > 0:
            raise ValueError(f"budget value must be > 0 {self.unit}, got {self.value}")

    def used(self, counters: dict[str, float]) -> float:
        """How much of the unit `counters` (the trainer's progress: kimg, passes, flops, seconds) spent."""
        return float(counters[self.unit])

    def fraction(self, counters: dict[str, float]) -> float:
        return self.used(counters) / self.value

    def reached(self, counters: dict[str, float]) -> bool:
        return self.used(counters) >= self.value


def log_fractions(count: int, first: float) -> list[float]:
    """`count` fractions of the budget spaced evenly in log scale from `first` to 1 (curves of a
    fast-falling metric are dense early, like the published SiD curves)."""
    if count <= 0:
        return []
    if not 0 < first <= 1:
        raise ValueError(f"the first log-spaced evaluation point must be in (0, 1], got {first}")
    return [float(f) for f in np.geomspace(first, 1.0, count)] if count > 1 else [1.0]


def crossed_fractions(before: float, after: float, fractions: Sequence[float]) -> bool:
    """Did the used fraction of the budget pass one of `fractions` in this iteration?"""
    return any(before < f <= after for f in fractions)
