"""What ``csd-edit-2d`` tells the user while it works: the phase it is in, and a progress bar over the steps.

Phases (reading, loading, encoding, decoding and writing) show as a spinner line on a terminal that is replaced
by the next one, so that a run that fails still ends with its one error line and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Phases and a rich bar with the step, the timestep and the time left; silent when ``quiet``.

    It also remembers how far the edit got, for the message of an interrupted run.
    """

    def __init__(self, total: int, quiet: bool, console: Any) -> None:
        self.total, self.quiet, self.console = total, quiet, console
        self.step = 0
        self.bar = None
        self.task = None

    @contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """Say what the run is doing for as long as it does it (loading, encoding, decoding, writing)."""
        with nullcontext() if self.quiet else self.console.status(text):
            yield

    def say(self, text: str) -> None:
        """A line that stays (where results go)."""
        if not self.quiet:
            self.console.print(text, soft_wrap=True, highlight=False)

    def __enter__(self) -> Progress:
        if not self.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("[bold]CSD-Edit"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("t={task.fields[t]:>3}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task("edit", total=self.total, t="-")
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def update(self, step: int, stats: Any) -> None:
        """After each step (1-based)."""
        self.step = step
        if self.bar is not None:
            self.bar.update(self.task, completed=step, t=stats.timestep)
