"""Opening a SQLite database this process may not write: read it as it is, creating nothing beside it.

A database in WAL mode is read through an index file beside it (``study.db-shm``), which SQLite creates on
first read. In a folder this user cannot write it cannot be created, so even ``study list`` failed with
"attempt to write a readonly database"; in a folder it can write, a reader that cannot write the database
itself left ``-shm`` and ``-wal`` files the database's owner could then not write. Such a database is opened
read-only (``mode=ro``) and, when no index exists, ``immutable``: SQLite then reads the file alone, with no
index, lock or journal. No index means no process has the database open (a WAL writer keeps one while it
runs), and none can start writing while this one reads unless it may write the folder too. A command that
must write such a database fails in one sentence ("attempt to write a readonly database"), as it would
anyway.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

# Bytes 18 and 19 of a SQLite header are the file format's write and read versions: 2 in WAL mode.
_WAL_HEADER = b"\x02\x02"


def _is_wal(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            header = handle.read(20)
    except OSError:
        return False  # unreadable: SQLite's own error says so
    return header[18:20] == _WAL_HEADER


def read_only_url(url: str, path: str) -> str:
    """``url`` (a SQLite URL of the existing file ``path``), or a read-only URI form of it where this process
    cannot write the file or its folder. An URL already in URI form is the user's choice and kept."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.query.get("uri") == "true":
        return url
    file = Path(path).absolute()
    if os.access(file, os.W_OK) and os.access(file.parent, os.W_OK | os.X_OK):
        return url
    index = file.with_name(file.name + "-shm")
    query = {"mode": "ro", "uri": "true"}
    if _is_wal(file) and not index.exists():
        query["immutable"] = "1"
    # SQLite's URI form percent-decodes the path; SQLAlchemy's URL adds its own layer when rendered.
    return parsed.set(database=f"file:{quote(str(file))}", query=query).render_as_string(hide_password=False)
