"""Storage URLs: one URL chooses the database; passwords never reach logs or output.

SQLite is the default (a file in the working directory). ``postgresql://`` is read as
``postgresql+psycopg://`` because psycopg (v3) is the driver we install.
"""

from __future__ import annotations

import os

from allocator._errors import StorageError

DEFAULT_URL = "sqlite:///sparsealloc.db"
URL_ENVIRONMENT_VARIABLE = "SPARSEALLOC_STORAGE"


def resolve_url(url: str | None) -> str:
    """The storage URL to use: ``url``, else ``$SPARSEALLOC_STORAGE``, else SQLite in the working directory.

    Validated and normalised; a malformed URL or an unsupported backend is one clear error that never
    shows the password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    raw = url or os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError) as error:
        raise StorageError(f"Storage URL {mask_url(raw)!r} is malformed; expected e.g. {DEFAULT_URL!r}.") from error
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        elif parsed.drivername != "postgresql+psycopg":
            raise StorageError(f"Storage URL driver {parsed.drivername!r} is not installed; use postgresql+psycopg://.")
    elif backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise StorageError(
                "An in-memory SQLite database cannot be shared or resumed; give a file, e.g. sqlite:///study.db."
            )
    else:
        raise StorageError(f"Storage backend {backend!r} is not supported; use sqlite:/// or postgresql+psycopg://.")
    return parsed.render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (also for URLs SQLAlchemy cannot parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # user:password@host -> user:***@host, by hand, for the malformed-URL message itself.
        scheme, sep, rest = url.partition("://")
        credentials, at, host = rest.rpartition("@")
        if at and ":" in credentials:
            user = credentials.split(":", 1)[0]
            return f"{scheme}{sep}{user}:***@{host}"
        return url
    return parsed.render_as_string(hide_password=True)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")
