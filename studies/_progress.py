"""Progress display for long work: rich progress bars on stderr, so stdout stays parseable.

On a terminal rich draws bars. Anywhere else (a log file, CI, ``nohup``) rich draws nothing until the end,
so a slow machine could not be told from a hang: there :class:`LoggedProgress` writes plain lines instead,
one when a phase starts, one when it ends, and one per unfinished phase every ``SPARSEALLOC_PROGRESS_SECONDS``
(default 20) with its count, elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)

#: Seconds between progress lines when stderr is not a terminal (at most; a line also marks each phase).
LOG_INTERVAL_S = 20.0


def log_interval() -> float:
    """The seconds between progress lines in a log: ``SPARSEALLOC_PROGRESS_SECONDS``, else :data:`LOG_INTERVAL_S`."""
    value = os.environ.get("SPARSEALLOC_PROGRESS_SECONDS", "")
    try:
        return float(value) if value and float(value) > 0 else LOG_INTERVAL_S
    except ValueError:
        return LOG_INTERVAL_S


def _clock(seconds: float | None) -> str:
    return str(timedelta(seconds=round(seconds))) if seconds is not None else "?"


def task_line(task: Task) -> str:
    """One line of a phase's progress: ``Calibrating: 12/48 (25%), 0:00:30 elapsed, about 0:01:30 left``."""
    description = task.description.strip()
    if task.finished:
        return f"{description}: done, {task.completed:g}/{task.total:g} in {_clock(task.finished_time)}"
    share = f" ({task.percentage:.0f}%)" if task.total else ""
    left = f", about {_clock(task.time_remaining)} left" if task.time_remaining is not None else ""
    return f"{description}: {task.completed:g}/{task.total or 0:g}{share}, {_clock(task.elapsed or 0.0)} elapsed{left}"


class LoggedProgress(Progress):
    """A rich :class:`~rich.progress.Progress` that, when its console is not a terminal, writes progress lines
    (see the module docstring) from a thread of its own, so a phase that advances rarely still shows it lives."""

    def __init__(self, *columns: Any, interval: float | None = None, **options: Any) -> None:
        if not (options.get("console") or stderr_console).is_terminal:
            options["transient"] = True  # the lines said it all: no final drawing of the bars
        super().__init__(*columns, **options)
        self.interval = log_interval() if interval is None else interval
        self._logging = not self.console.is_terminal
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> None:
        """Start the display, and the line writer when the console is not a terminal."""
        super().start()
        if self._logging and self._ticker is None:
            self._stopped.clear()
            self._ticker = threading.Thread(target=self._tick, name="progress-lines", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        """Stop the line writer, then the display."""
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        super().stop()

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        """Add a phase; in a log, say that it started."""
        task_id = super().add_task(description, *args, **kwargs)
        if self._logging:
            self.console.print(f"{description.strip()}: started", highlight=False)
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        """Update a phase; in a log, say so when this update finishes it."""
        was_finished = self._task(task_id).finished
        super().update(task_id, **kwargs)
        self._say_if_finished(task_id, was_finished)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        """Advance a phase; in a log, say so when this advance finishes it."""
        was_finished = self._task(task_id).finished
        super().advance(task_id, advance)
        self._say_if_finished(task_id, was_finished)

    def _task(self, task_id: TaskID) -> Task:
        with self._lock:
            return self._tasks[task_id]

    def _say_if_finished(self, task_id: TaskID, was_finished: bool) -> None:
        task = self._task(task_id)
        if self._logging and task.finished and not was_finished:
            self.console.print(task_line(task), highlight=False)

    def _tick(self) -> None:
        while not self._stopped.wait(self.interval):
            with self._lock:
                unfinished = [task for task in self._tasks.values() if task.visible and not task.finished]
            for task in unfinished:
                self.console.print(task_line(task), highlight=False)


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
    with LoggedProgress(*columns, console=stderr_console) as bar:
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


def study_progress(console: Console | None = None, *, interval: float | None = None) -> LoggedProgress:
    """The display the study runner's :class:`RichReporter` draws on: bars on stderr (so stdout stays parseable),
    or progress lines when stderr is not a terminal."""
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or stderr_console,
        interval=interval,
    )
