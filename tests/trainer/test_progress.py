"""The progress line keeps what a researcher watches: the last evaluation's metric comes before the
losses (which a narrow terminal cuts first), and the evaluation's time is labelled."""
from __future__ import annotations

import io

from rich.console import Console

from sidbench.trainer.budget import Budget
from sidbench.trainer.progress import Progress
from sidbench.trainer.progress import ProgressDisplay


def test_the_metric_survives_an_80_column_line_and_persists_between_evaluations() -> None:
    display = ProgressDisplay(Budget("kimg", 100.0), line_every_s=0.0)
    buf = io.StringIO()
    display.console = Console(file=buf, width=80, color_system=None)  # not a terminal: one line per update
    progress = Progress(images_seen=12_000, seconds=60.0)
    losses = {"fake_score": 49.3312, "generator": 0.008825, "dm": 0.25, "regression": 0.1}
    display.update(progress, losses, {"eval/fd_pixel": 0.1912, "eval/seconds": 3.2})
    display.update(Progress(images_seen=13_000, seconds=65.0), losses)  # no evaluation this time
    first, second = buf.getvalue().splitlines()[:2]
    for line in (first, second):
        assert line.index("fd_pixel 0.1912 (eval 3 s)") < line.index("fake_score=")
        assert line.index("fd_pixel") < 80  # within the first 80 columns
    assert "seconds=" not in first


def test_a_terminal_display_runs_no_refresh_thread_and_redraws_at_most_once_per_interval() -> None:
    # rich's own refresh thread would take the GIL from training 10 times a second; the display
    # redraws from `update` instead, throttled.
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=True, color_system=None)
    display = ProgressDisplay(Budget("kimg", 100.0), console=console, refresh_every_s=3600.0)
    assert display.live
    losses = {"fake_score": 1.0}
    with display:
        assert display._bar.live._refresh_thread is None  # noqa: SLF001
        display.update(Progress(images_seen=1_000, seconds=1.0), losses)  # the first update draws
        drawn = buf.getvalue()
        assert "1.0 kimg" in drawn
        for k in range(2, 50):  # within the interval: nothing drawn
            display.update(Progress(images_seen=k * 1_000, seconds=float(k)), losses)
        assert buf.getvalue() == drawn
        display.update(Progress(images_seen=50_000, seconds=50.0), losses, {"eval/fd_pixel": 0.25})  # an evaluation draws
        assert "fd_pixel 0.25" in buf.getvalue()[len(drawn):]
        display.refresh_every_s = 0.0
        display.update(Progress(images_seen=51_000, seconds=51.0), losses)
        assert "51.0 kimg" in buf.getvalue()
