"""Ctrl-C and SIGTERM while a study runs: stop where stopping is safe, so the command ends in one sentence.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives. Inside
Optuna's or SQLAlchemy's bookkeeping (creating a trial, storing its result, a pool's connection ping) that
leaves the state half-updated: SQLAlchemy, cleaning up the interrupted connection, raises a database error
that hides the interrupt, and the command ends in a traceback instead of a sentence. A trial's objective
reads and writes the database too (its stored reference, its measurements), so no part of it is safe.

So while a study runs, SIGINT and SIGTERM (``docker stop``, ``kill``) only note the request, which is raised
at the next safe point (:meth:`Interrupts.check`): every evaluated batch (a fraction of a second on a GPU),
every pass of the study loop. Only sleeps (:meth:`Interrupts.sleep`) are interrupted at once. A second
signal while the first waits for its safe point interrupts at once wherever the process is: the way out of a
step that hangs.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """A stop requested by SIGINT or SIGTERM, raised as ``KeyboardInterrupt`` where it is safe."""

    def __init__(self) -> None:
        self.requested = False
        self._immediate = 0

    def _handle(self, signum: int, frame: Any) -> None:
        again = self.requested
        self.requested = True
        if self._immediate or again:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM this way within the block (outside the main thread: no signals come)."""
        try:
            previous = {number: signal.signal(number, self._handle) for number in _SIGNALS}
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    @contextmanager
    def immediate(self) -> Iterator[None]:
        """Let a signal interrupt the block at once; a stop requested before it is raised on entry."""
        self.check()
        self._immediate += 1
        try:
            yield
        finally:
            self._immediate -= 1

    def check(self) -> None:
        """A safe point: raise ``KeyboardInterrupt`` if a stop was requested."""
        if self.requested:
            raise KeyboardInterrupt

    def sleep(self, seconds: float) -> None:
        """Wait, stopping at once if asked to."""
        with self.immediate():
            time.sleep(seconds)
