"""An iteration's losses and logged values, kept on the device until the loop needs them.

Reading a device value back to the host waits for every kernel queued before it: done once per
iteration, it keeps a GPU from running ahead of Python. The tally adds each iteration's values
into float64 sums on the device, and keeps there the streak of consecutive iterations with a
non-finite loss; `read` brings them back in one transfer (and, with several processes, one
collective), at the loop's logging ticks and decision points only.

The sums are the ones the loop kept on the host before (each value rounded to float64, added in
the same order), so logged means are bit-identical to a loop that reads every iteration. With
several processes the mean over ranks is now taken of the tick's sums (the same up to round-off),
and the streak is the longest of the ranks' own streaks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from sidbench.distributed import is_distributed, reduce_values


@dataclass
class Reading:
    streak: int                      # consecutive iterations, up to the last, with a non-finite loss
    last_losses: dict[str, float]    # the last iteration's losses (`loss/<name>`), mean over ranks
    means: dict[str, float] = field(default_factory=dict)  # the tick's means (only when read with tick=True)


class DeviceTally:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        # iterations that logged each key: a value logged on some iterations only (DMD2's generator
        # losses, every ttur-th) is the mean over those, not diluted by the others
        self.counts: dict[str, int] = {}
        self.streak = torch.zeros((), dtype=torch.float64, device=device)
        self.last: dict[str, torch.Tensor] = {}

    def _f64(self, value: torch.Tensor | float) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return torch.as_tensor(value, device=self.device).to(torch.float64).reshape(())
        # a fill, not a host-to-device copy (which would wait for the queue); float32 first, as
        # torch.as_tensor(float) rounds, so the value is the one the host-side loop logged
        return torch.full((), value, dtype=torch.float32, device=self.device).to(torch.float64)

    def add(self, losses: dict[str, torch.Tensor | float], logged: dict[str, torch.Tensor | float]) -> None:
        """One iteration's losses and values logged through the context (no host synchronisation)."""
        values = {**{f"loss/{k}": self._f64(v) for k, v in losses.items()},
                  **{f"train/{k}": self._f64(v) for k, v in logged.items()}}
        for k in sorted(values):  # the order the host-side loop added them in: the log lines' key order
            self.sums[k] = self.sums.get(k, 0.0) + values[k]
            self.counts[k] = self.counts.get(k, 0) + 1
        self.last = {k: v for k, v in values.items() if k.startswith("loss/")}
        if self.last:
            finite = torch.stack(list(self.last.values())).isfinite().all()
            self.streak = torch.where(finite, torch.zeros_like(self.streak), self.streak + 1)
        else:
            self.streak = torch.zeros_like(self.streak)

    def read(self, tick: bool) -> Reading:
        """The streak and the last losses; with `tick`, also the means since the last tick (then
        restarted). Every rank must call it at the same iterations."""
        streak = self.streak.clone()
        if is_distributed():
            dist.all_reduce(streak, op=dist.ReduceOp.MAX)
        values = {"_streak": streak, **{f"_last/{k}": v for k, v in self.last.items()}}
        if tick:
            values.update(self.sums)
        out, _ = reduce_values(values, {}, self.device)
        reading = Reading(int(out.pop("_streak")), {k.removeprefix("_last/"): v for k, v in out.items() if k.startswith("_last/")})
        if tick:
            reading.means = {k: out[k] / self.counts[k] for k in self.sums}
            self.sums, self.counts = {}, {}
        return reading
