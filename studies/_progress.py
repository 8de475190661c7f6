"""Progress display for long work: rich progress bars on stderr, so stdout stays parseable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int, *, unit: str = "") -> Iterator[Callable[[int], None]]:
    """A progress bar for ``total`` steps; yields ``advance(n)``."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr_console) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


class RichReporter:
    """The study runner's progress on stderr: a bar of complete trials and a bar for the trial being evaluated."""

    def __init__(self, progress: Progress, target: int, complete: int = 0) -> None:
        self.progress = progress
        self.trials = progress.add_task("Trials", total=target, completed=complete)
        self.current: TaskID | None = None

    def status(self, message: str) -> None:
        """Show ``message`` beside the trials bar, so that a user sees why no trial is advancing (a lost connection,
        trials running elsewhere)."""
        self.progress.update(self.trials, description=f"Trials ({message})")

    def trial_started(self, number: int, sequences: int) -> Callable[[int], None]:
        """Replace the current trial's bar with one for trial ``number`` over ``sequences`` sequences; returns its
        ``advance(n)``."""
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.current = self.progress.add_task(f"  trial {number}", total=sequences)
        task = self.current
        return lambda n: self.progress.advance(task, n)

    def trial_finished(self, trial: Any, complete: int, target: int) -> None:
        """Drop the trial's bar, advance the trials bar to ``complete`` and print the trial's value (or its state) above
        the bars."""
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        value = f"{trial.value:.3f}" if trial.value is not None else trial.state.name.lower()
        self.progress.update(self.trials, completed=complete, description="Trials")
        self.progress.console.print(f"trial {trial.number}: {value}", highlight=False)


def study_progress() -> Progress:
    """The rich display the study runner's :class:`RichReporter` draws on: bars on stderr, so stdout stays parseable."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
    )
