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
