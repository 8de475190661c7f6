"""Waiting for a study that another process is creating (``sparsealloc worker NAME --wait SECONDS``).

Workers may start before ``study create`` has run: docker compose starts them with the database, and a
machine joins whenever it is ready. What a worker waits for is a state of the database: it opens (the
SQLite file exists, the PostgreSQL server answers), and the study is registered, in our table and in
Optuna's, which is what ``study create`` leaves once it has finished.

Why this reads the state again every :data:`STUDY_POLL_S` seconds rather than being told: nothing can tell
it. Until the study is created the database may not exist at all (no SQLite file, a server still starting),
so there is no connection to listen on and no row to lease or lock (the leases of :mod:`storage._leases`
coordinate workers of a study that exists); SQLite has no notification between processes; and Optuna has no
wait of its own. The wait ends as soon as the state holds, and at a deadline on the monotonic clock, never
after it (the last read is at the deadline), so it does not depend on how fast the machine is.

Until the deadline every refusal reads as "not yet": while another process creates a database, it passes
through states that read as errors (a file without tables, tables without their version row, a server
refusing connections while it starts). At the deadline the refusal is the one the command gives without
waiting.
"""

from __future__ import annotations

import time

from allocator.errors import SparseallocError
from storage._database import Database
from storage._errors import StorageError

#: Seconds between two reads of the database's state while a study is awaited (each one reads one row).
STUDY_POLL_S = 1.0


def study_created(url: str | None, name: str) -> Database:
    """The database at ``url``, opened without creating anything, if study ``name`` is fully created there:
    registered in our table and in Optuna's. Otherwise one sentence (a :class:`StorageError`) saying what is
    missing: the database, the study (naming those it holds), or Optuna's half of an unfinished create."""
    from optuna.exceptions import StorageInternalError

    database = Database(url, create=False)
    try:
        database.study_config(name)
        try:
            database.optuna_storage.get_study_id_from_name(name)
        except (KeyError, StorageInternalError):  # no such study in Optuna's tables, or no tables yet
            raise StorageError(
                f"Study {name!r} in {database.masked_url} is registered but its trials' storage is not created "
                "yet; `study create` is still running, or was interrupted (run it again)."
            ) from None
    except BaseException:
        database.dispose()
        raise
    return database


def wait_for_study(url: str | None, name: str, *, wait_s: float = 0.0, poll_s: float = STUDY_POLL_S) -> Database:
    """The database at ``url`` once study ``name`` is created there (:func:`study_created`), waiting up to
    ``wait_s`` seconds for another process to create it; after that, the refusal of the last read."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return study_created(url, name)
        except SparseallocError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            time.sleep(min(poll_s, remaining))
