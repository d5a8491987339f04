"""The live progress display: images seen, sec/kimg, losses, ETA (a line per tick off a TTY)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressDisplay:
    def __init__(self, total_images: int, enabled: bool = True, start: int = 0, line_every_s: float = 15.0) -> None:
        self.total = total_images
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.line_every_s = line_every_s
        self._last_line = 0.0
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[kimg]}"),
            TextColumn("{task.fields[speed]}"), TextColumn("{task.fields[losses]}"), TimeRemainingColumn(),
            console=self.console, disable=not self.live,
        )
        self._task = self._bar.add_task("train", total=total_images, completed=start, kimg="", speed="", losses="")

    def __enter__(self) -> ProgressDisplay:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def update(self, images_seen: int, seconds: float, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        kimg = f"{images_seen / 1000:.1f}/{self.total / 1000:.1f} kimg"
        speed = f"{seconds / max(images_seen / 1000, 1e-9):.2f} s/kimg"
        losses = " ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in values.items())
        if self.live:
            self._bar.update(self._task, completed=images_seen, kimg=kimg, speed=speed, losses=losses)
        elif time.monotonic() - self._last_line > self.line_every_s or images_seen >= self.total:
            self._last_line = time.monotonic()
            per_image = seconds / max(images_seen, 1)  # both counters include resumed progress
            eta = per_image * max(self.total - images_seen, 0)
            self.console.print(f"{kimg}  {speed}  ETA {eta / 60:.1f} min  {losses}", highlight=False, soft_wrap=True)
