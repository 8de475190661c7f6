"""Storage's errors: :class:`StorageError`, and which database errors are a lost connection (wait and
reconnect) and which are real (stop, say why).

A lost connection (a PostgreSQL restart, a network cut) is worth waiting out: the runner reconnects and
goes on. Everything else is not: a read-only SQLite file, a full disk or a corrupt file fails the same way
however long one waits, so it must end the command with one sentence instead of a reconnect loop.
SQLite has no server to lose, so none of its errors is a lost connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from allocator.errors import SparseallocError


class StorageError(SparseallocError, RuntimeError):
    """The study database cannot be opened, reached or understood (a user's error: the command line prints its
    one sentence and exits with status 2, as for every :class:`~allocator.errors.SparseallocError`)."""


#: The SQLAlchemy classes a lost connection arrives as (narrowed further by :func:`is_connection_error`).
CONNECTION_ERRORS = (OperationalError, InterfaceError)

# PostgreSQL SQLSTATEs of a connection that went away: class 08 (connection exception) and the server
# shutting down or starting up (57P01-57P03).
_LOST_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything it was raised from (Optuna wraps driver errors in its own)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def database_error(error: BaseException) -> DBAPIError | None:
    """The first database driver error in ``error``'s cause chain, or None."""
    return next((e for e in _chain(error) if isinstance(e, DBAPIError)), None)


def is_connection_error(error: BaseException) -> bool:
    """True if ``error`` (or anything it was raised from) is a lost connection to a database server."""
    found = database_error(error)
    if found is None:
        return False
    if found.connection_invalidated:
        return True
    if not isinstance(found, CONNECTION_ERRORS) or isinstance(found.orig, sqlite3.Error):
        return False
    state = getattr(found.orig, "sqlstate", None)
    # psycopg reports a refused or broken connection as a bare OperationalError without a SQLSTATE.
    return state is None or str(state).startswith(_LOST_CONNECTION_STATES)
