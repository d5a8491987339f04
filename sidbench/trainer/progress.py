"""A run's progress: its counters (global over processes, checkpointed), and their live display
(budget used, the last evaluation, sec/kimg, losses, ETA; a line per tick off a TTY)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

if TYPE_CHECKING:
    from sidbench.trainer.budget import Budget


@dataclass
class Progress:
    """The run's counters, global over processes; checkpointed."""

    images_seen: int = 0
    iteration: int = 0
    passes: float = 0.0
    teacher_passes: float = 0.0
    flops: float = 0.0
    seconds: float = 0.0
    eval_seconds: float = 0.0
    stage: int = 0

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000

    def counters(self) -> dict[str, float]:
        """The budget units' values."""
        return {"kimg": self.kimg, "passes": self.passes, "flops": self.flops, "seconds": self.seconds}


class ProgressDisplay:
    """One line: budget used, the last evaluation's metric (what a researcher watches, so it comes
    before the losses, which a narrow terminal cuts first), speed, losses and ETA."""

    def __init__(self, budget: Budget, enabled: bool = True, start: float = 0.0, line_every_s: float = 15.0,
                 refresh_every_s: float = 1.0, console: Console | None = None) -> None:
        self.budget = budget
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.line_every_s = line_every_s
        self.refresh_every_s = refresh_every_s
        self._last_line = 0.0
        self._last_refresh = 0.0
        self._metric = ""
        self._bar = Bar(
            TextColumn("{task.fields[used]}"), BarColumn(bar_width=12), TextColumn("[bold]{task.fields[metric]}"),
            TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
            # No refresh thread: rich's would redraw 10 times a second, each time taking the GIL
            # from the training thread. `update` redraws instead, at most once per
            # `refresh_every_s` (benchmarks/test_bench_display.py measures both).
            console=self.console, disable=not self.live, auto_refresh=False,
        )
        self._task = self._bar.add_task("train", total=budget.value, completed=start, used="", speed="", losses="", metric="")

    def __enter__(self) -> ProgressDisplay:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def update(self, progress: Progress, losses: dict[str, float], evaluation: dict[str, float] | None = None) -> None:
        """`losses`: the last iteration's, as of the loop's last reading (at ticks, not every iteration); `evaluation` (the `eval/...` values) when one just ran."""
        if not self.enabled:
            return
        if evaluation:
            metrics = {k.removeprefix("eval/"): v for k, v in evaluation.items() if not k.endswith("seconds")}
            took = evaluation.get("eval/seconds")
            self._metric = " ".join(f"{k} {v:.4g}" for k, v in metrics.items()) + (f" (eval {took:.0f} s)" if took else "")
        used = self.budget.used(progress.counters())
        fraction = used / self.budget.value
        text = f"{progress.kimg:.1f} kimg {100 * fraction:.0f}%"
        speed = f"{progress.seconds / max(progress.kimg, 1e-9):.2f} s/kimg"
        loss_text = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
        if self.live:
            self._bar.update(self._task, completed=used, used=text, speed=speed, losses=loss_text, metric=self._metric)
            if evaluation or fraction >= 1 or time.monotonic() - self._last_refresh >= self.refresh_every_s:
                self._last_refresh = time.monotonic()
                self._bar.refresh()
        elif time.monotonic() - self._last_line > self.line_every_s or fraction >= 1:
            self._last_line = time.monotonic()
            rate = progress.seconds / max(fraction, 1e-12)  # seconds per whole budget so far
            eta = rate * max(1 - fraction, 0)
            budget = f"of {self.budget.value:.4g} {self.budget.unit}"
            self.console.print(f"{text} {budget}  {self._metric}  {speed}  ETA {eta / 60:.1f} min  {loss_text}",
                               highlight=False, soft_wrap=True)
