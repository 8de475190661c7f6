"""Storage URLs: one URL chooses the database; passwords never reach logs or output.

SQLite is the default (a file in the working directory). ``postgresql://`` is read as
``postgresql+psycopg://`` because psycopg (v3) is the driver we install. A password may sit in the URL's
credentials (``user:password@host``, raw ``@`` and all) or in its query (``?password=...``); either way it
is masked as ``***`` wherever a URL is shown, and :func:`redact` removes it from any other text (a driver's
error message, say).
"""

from __future__ import annotations

import os
from urllib.parse import quote, unquote

from storage._errors import StorageError

DEFAULT_URL = "sqlite:///sparsealloc.db"
URL_ENVIRONMENT_VARIABLE = "SPARSEALLOC_STORAGE"
_MASK = "***"
_MIN_REDACTED = 3

# Every password seen in a URL this process resolved or masked, for :func:`redact`.
_PASSWORDS: set[str] = set()


def chosen_url(url: str | None) -> str:
    """The URL a command uses: ``url``, else ``$SPARSEALLOC_STORAGE``, else SQLite in the working directory.

    An empty string (``--storage ''``, ``SPARSEALLOC_STORAGE=``) counts as not given.
    """
    return url or os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL


def resolve_url(url: str | None) -> str:
    """The storage URL to use (see :func:`chosen_url`), validated and normalised.

    A malformed URL or an unsupported backend is one clear error that never shows the password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    raw = _encode_credentials(chosen_url(url))
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError) as error:
        raise StorageError(f"Storage URL {mask_url(raw)!r} is malformed; expected e.g. {DEFAULT_URL!r}.") from error
    _remember_passwords(parsed)
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
    """``url`` with every password replaced by ``***`` (also for URLs SQLAlchemy cannot parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    encoded = _encode_credentials(url)
    try:
        parsed = make_url(encoded)
    except (ArgumentError, ValueError):
        return _mask_by_hand(url)
    _remember_passwords(parsed)
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": _MASK})
    # Rendering percent-encodes the query's mask; show it as it is meant to read.
    return redact(parsed.render_as_string(hide_password=True).replace("password=%2A%2A%2A", f"password={_MASK}"))


def redact(text: str) -> str:
    """``text`` with every password of a URL this process has seen replaced by ``***``."""
    # Passwords of one or two characters would turn ordinary words into noise; drivers never echo a password,
    # so free text is only a second line of defence, and URLs themselves are always masked structurally.
    for password in sorted(_PASSWORDS, key=len, reverse=True):
        if len(password) >= _MIN_REDACTED:
            text = text.replace(password, _MASK)
    return text


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names a SQLite database, which the storage opens and locks differently (a busy timeout, WAL, a
    file lock beside it)."""
    return url.startswith("sqlite")


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL, also in SQLite's URI form (``sqlite:///file:study.db?mode=ro&uri=true``)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if database and parsed.query.get("uri") == "true" and database.startswith("file:"):
        database = unquote(database.removeprefix("file:"))  # SQLite's URI form percent-encodes the path
    return database


def _split_query(rest: str) -> tuple[str, str]:
    base, question, query = rest.partition("?")
    return base, question + query


def _encode_credentials(url: str) -> str:
    """``scheme://user:pa@ss@host/db`` with the password percent-encoded, so the last ``@`` ends the credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    base, query = _split_query(rest)
    credentials, at, host = base.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user, _, password = credentials.partition(":")
    if password:
        _PASSWORDS.add(unquote(password))
        _PASSWORDS.add(password)
    return f"{scheme}{sep}{user}:{quote(unquote(password), safe='')}@{host}{query}"


def _remember_passwords(parsed: object) -> None:
    password = getattr(parsed, "password", None)
    if password:
        _PASSWORDS.add(str(password))
        _PASSWORDS.add(quote(str(password), safe=""))
    query = getattr(parsed, "query", {}) or {}
    values = query.get("password")
    for value in (values,) if isinstance(values, str) else values or ():
        if value:
            _PASSWORDS.add(value)


def _mask_by_hand(url: str) -> str:
    """user:password@host -> user:***@host and ?password=... -> ?password=***, for a URL that does not parse."""
    scheme, sep, rest = url.partition("://")
    base, query = _split_query(rest)
    credentials, at, host = base.rpartition("@")
    if at and ":" in credentials:
        user, _, password = credentials.partition(":")
        if password:
            _PASSWORDS.add(password)
        base = f"{user}:{_MASK}@{host}"
    if query:
        parts = []
        for part in query[1:].split("&"):
            key, equals, value = part.partition("=")
            if key == "password" and equals:
                _PASSWORDS.add(value)
                value = _MASK
            parts.append(f"{key}{equals}{value}")
        query = "?" + "&".join(parts)
    return redact(f"{scheme}{sep}{base}{query}")
