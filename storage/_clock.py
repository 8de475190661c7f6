"""The database's clock: the one clock every worker of a study agrees on.

Workers on several machines have clocks that differ by seconds or minutes; a lease stamped with one
worker's clock and read with another's can look fresh when it is dead, or dead when it is fresh. Every
stamp that another process compares (calibration claims, and Optuna's own trial heartbeats) is therefore
taken from the database server, as Optuna does for heartbeats.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection


def database_now(connection: Connection) -> datetime:
    """The database server's current time, timezone-aware UTC (millisecond resolution on SQLite)."""
    if connection.dialect.name == "sqlite":
        stamp = connection.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    value = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value.astimezone(UTC)


def as_utc(stamp: datetime) -> datetime:
    """A stored stamp as aware UTC (SQLite hands back naive datetimes; ours are all UTC)."""
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
