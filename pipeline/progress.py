"""The rich progress bar of long commands, usable as the `progress(phase, done, total)` callback of the stages."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    """Items per second of a task, e.g. '1,250 images/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"… {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress_bar(rate_unit: str | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """Yield a callback that shows one bar per phase (a phase is a label such as 'epoch 3/8').

    Shown on a terminal only, and under torchrun on rank 0 only.

    Args:
        rate_unit: show the rate in these units per second (e.g. 'images') and an ETA instead of the elapsed time.
    """
    show = sys.stderr.isatty() and os.environ.get("RANK", "0") == "0"
    if rate_unit is None:
        columns = [TimeElapsedColumn(), TimeRemainingColumn()]
    else:
        columns = [_RateColumn(rate_unit), TextColumn("ETA"), TimeRemainingColumn()]
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *columns,
                        transient=False, disable=not show)
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total)
        progress.update(tasks[phase], completed=done, total=total)

    with progress:
        yield update
