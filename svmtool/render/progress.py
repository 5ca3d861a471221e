"""Progress bars on stderr: downloads, feature learning and extraction, training steps."""

from __future__ import annotations

import contextlib
import math

from rich.console import Console

from svmtool.terminal import fmt


def download_bar(console: Console):
    """A download's bar: bytes, speed and time left."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]downloading"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@contextlib.contextmanager
def feature_progress(console: Console):
    """A progress callback for feature learning and extraction: one bar per stage
    (k-means iterations; images, with images/s and ETA), on ``console``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            unit = task.fields.get("unit", "")
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} {unit}/s")

    bar = None
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                Rate(),
                TimeRemainingColumn(),
                console=console,
            )
            bar.start()
        if stage not in tasks:
            unit = "iterations" if stage == "k-means" else "images"
            tasks[stage] = bar.add_task(stage, total=total, unit=unit)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        yield report
    finally:
        if bar is not None:
            bar.stop()


def loss_text(value: float) -> str:
    """A minibatch loss for the progress bar."""
    return fmt(value) if math.isfinite(value) else "diverged"


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def TimingColumn(**options):
    """'eta 0:42' while running, 'in 1:05' once done."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Timing(ProgressColumn):
        def render(self, task) -> Text:
            if task.finished and task.finished_time is not None:
                return Text(f"in {clock(task.finished_time)}")
            left = task.time_remaining
            return Text("eta " + ("-:--" if left is None else clock(left)))

    return Timing(**options)
