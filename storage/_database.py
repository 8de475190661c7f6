"""The study database: an engine on one URL, the schema check, our tables and Optuna's storage beside them.

SQLite runs in WAL mode with a 30 s busy timeout: with Optuna's RDB storage several processes and a short
timeout leave failed trials and trials stuck in RUNNING (``bench/soak.py`` exercises the 30 s one).
PostgreSQL connections are pinged before use, so a restarted server costs a reconnect, not an error.

Only ``create=True`` (``study create``, the demo, library use) makes a database or its tables. Every other
command opens what exists and writes nothing it does not need: a missing SQLite file is an error (no stray
empty files), and a database without our tables reads as one holding no studies (another application's
SQLite file is left exactly as it was, journal mode included).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, delete, event, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from allocator.errors import first_line
from allocator.paths import path_kind
from storage._errors import StorageError
from storage._leases import ArtifactClaims, proposal_lock
from storage._readonly import read_only_url
from storage._tables import SCHEMA_VERSION, Base, ExportRecord, Meta, ModelRecord, StudyRecord
from storage._url import is_sqlite, mask_url, redact, resolve_url, sqlite_path

if TYPE_CHECKING:
    import optuna

SQLITE_BUSY_TIMEOUT_S = 30
HEARTBEAT_INTERVAL_S = 5
HEARTBEAT_GRACE_S = 20


# How long a version row may lag its table while another process creates the schema (a loaded machine's
# commits take a while); a table left without its row for longer was not written by sparsealloc.
_SCHEMA_WAIT_S = 10.0
# Optuna's schema has about twenty tables and rows; each lost race means the other process created one of them.
_SCHEMA_RACE_RETRIES = 50


def _lost_schema_race(error: DatabaseError) -> bool:
    """Whether ``error`` is another process having just created the table or row this one was creating."""
    return isinstance(error, IntegrityError) or "already exists" in str(error.orig)


def _enforce_foreign_keys(engine: Engine) -> None:
    """Make SQLite refuse rows whose parent is gone, as PostgreSQL does.

    SQLite checks foreign keys only on connections that ask. Without it a worker still running a study that
    another process deleted (``study delete --force``) went on writing a trial, its attributes and heartbeat
    for a study that no longer existed: rows that a later study given the same id would inherit.
    """

    @event.listens_for(engine, "connect")
    def _foreign_keys(connection: Any, _record: Any) -> None:
        connection.execute("PRAGMA foreign_keys=ON")

    engine.dispose()  # the connections made while opening the storage were made without it


def _engine_kwargs(url: str) -> dict[str, Any]:
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}


class Database:
    """One study database (SQLite or PostgreSQL): our tables plus Optuna's RDB storage on the same URL.

    Args:
        url: The storage URL (None: ``$SPARSEALLOC_STORAGE``, else ``sqlite:///sparsealloc.db``).
        create: Create the database and its tables if missing. Without it a missing SQLite file is refused
            and a database without our tables is read as empty, with nothing written.
        heartbeat_grace_s: How stale (database clock) a trial's heartbeat must be before it is failed.
    """

    def __init__(self, url: str | None = None, *, create: bool = True, heartbeat_grace_s: float = HEARTBEAT_GRACE_S):
        self.url = resolve_url(url)
        self.masked_url = mask_url(self.url)
        self.create = create
        self.heartbeat_grace_s = heartbeat_grace_s
        if is_sqlite(self.url):
            self._check_sqlite_file()
            if not create:  # a file this user may not write is read as it is (see storage._readonly)
                self.url = read_only_url(self.url, sqlite_path(self.url) or "")
        self.engine = self._create_engine()
        self.has_schema = self._check_schema()
        self.claims = ArtifactClaims(self.engine)

    # -- connection and schema ---------------------------------------------------------------------------
    def _check_sqlite_file(self) -> None:
        """The SQLite file must be a file (without ``create``, an existing one; with it, or a new one in an
        existing folder); a path that cannot be looked at (a folder on its way closed to this user, a name too
        long, a loop of symbolic links) is one sentence, before SQLite's bare "unable to open database file"."""
        path = sqlite_path(self.url) or ""
        subject = f"The SQLite database {path!r} of the storage URL cannot be opened"
        kind = path_kind(path, subject, error=StorageError) if path else "missing"
        if kind == "file":
            return
        if kind != "missing":
            raise StorageError(f"{subject}: it is not a file.")
        if not self.create:
            raise StorageError(
                f"No sparsealloc database at {path}; `sparsealloc study create` makes one, or give the study's "
                "database with --storage (or $SPARSEALLOC_STORAGE)."
            )
        folder = Path(path).parent
        if path_kind(folder, subject, error=StorageError) != "directory":
            raise StorageError(f"{subject}: its folder {str(folder)!r} does not exist.")

    def _create_engine(self) -> Engine:
        engine = create_engine(self.url, **_engine_kwargs(self.url))
        if is_sqlite(self.url):
            switch_to_wal = self.create

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(connection: Any, _record: Any) -> None:
                cursor = connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
                # WAL is a property of the file (Optuna's connections get it too): switched once, by the command
                # that creates the database. The switch needs the file to itself and is not retried by the busy
                # timeout, so a busy file is left to the next connection that finds it free.
                if switch_to_wal and cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    with contextlib.suppress(sqlite3.OperationalError):
                        cursor.execute("PRAGMA journal_mode=WAL")
                cursor.close()

        return engine

    def _unreachable(self, error: BaseException) -> StorageError:
        return StorageError(f"Cannot open the database {self.masked_url}: {redact(first_line(error))}")

    def _read_schema(self) -> tuple[set[str], str | None]:
        try:
            with self.engine.connect() as connection:
                tables = set(inspect(connection).get_table_names())
                row = (
                    connection.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
                    if Meta.__tablename__ in tables
                    else None
                )
        except DatabaseError as error:  # unreachable, or not a database at all (random bytes, a truncated file)
            raise self._unreachable(error) from error
        return tables, row

    def _check_schema(self) -> bool:
        """Check the schema version of an existing database; create the tables if asked to. True if present.

        Several workers may open a new database at the same moment: whoever loses the race to create the
        tables reads the schema again (a version row not yet written means another process is creating it).
        """
        row: str | None = None
        deadline = time.monotonic() + _SCHEMA_WAIT_S
        while time.monotonic() < deadline:
            tables, row = self._read_schema()
            if Meta.__tablename__ in tables:
                if row is None:
                    time.sleep(0.1)  # another process is creating the schema
                    continue
                self._check_version(row)
                return True
            if any(table.startswith("sparsealloc_") for table in tables):
                raise StorageError(
                    f"The database {self.masked_url} has sparsealloc tables but no schema version; "
                    "it was not written by this tool."
                )
            if not self.create:
                return False
            try:
                Base.metadata.create_all(self.engine)
                with Session(self.engine) as session, session.begin():
                    session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return True
            except (IntegrityError, OperationalError, ProgrammingError):
                continue  # lost the race to create the schema: read it again
        raise StorageError(
            f"The database {self.masked_url} has an unknown sparsealloc schema ({row!r}); it was not written by "
            "sparsealloc."
        )

    def _check_version(self, row: str) -> None:
        try:
            version = int(row)
        except ValueError:
            raise StorageError(
                f"The database {self.masked_url} has an unknown sparsealloc schema ({row!r}); "
                "it was not written by sparsealloc."
            ) from None
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"The database {self.masked_url} has schema version {version}, newer than this "
                f"sparsealloc supports ({SCHEMA_VERSION}); upgrade sparsealloc."
            )
        if version < SCHEMA_VERSION:
            raise StorageError(
                f"The database {self.masked_url} has schema version {version}, written by an older sparsealloc "
                f"whose studies this one ({SCHEMA_VERSION}) cannot continue; use a new database."
            )

    @cached_property
    def optuna_storage(self) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage on the same URL, with heartbeats and up to three retries of stale trials.

        With ``create``, Optuna creates its tables, version row and Alembic stamp, each checked first and then
        written; two processes creating a new database at once (two ``study create``) can both find a table
        missing, and the slower one's CREATE or INSERT then fails ("table trial_params already exists", a
        duplicate ``alembic_version`` row). Each such loss means the other process wrote that object, so the
        loser simply tries again, finding more of the schema in place each time.
        """
        import optuna
        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
            for attempt in range(_SCHEMA_RACE_RETRIES + 1):
                try:
                    storage = optuna.storages.RDBStorage(
                        self.url,
                        engine_kwargs=_engine_kwargs(self.url),
                        heartbeat_interval=HEARTBEAT_INTERVAL_S,
                        grace_period=int(self.heartbeat_grace_s),
                        heartbeat_stale_trial_callback=callback,
                        skip_table_creation=not self.create,
                    )
                    if is_sqlite(self.url):
                        _enforce_foreign_keys(storage.engine)
                    return storage
                except DatabaseError as error:
                    if not (self.create and attempt < _SCHEMA_RACE_RETRIES and _lost_schema_race(error)):
                        raise self._unreachable(error) from error
                    time.sleep(0.05)
        raise AssertionError("unreachable")  # the loop returns or raises

    def dispose(self) -> None:
        """Close every pooled connection, ours and Optuna's storage's, so that a process done with the database holds
        none open."""
        self.engine.dispose()
        if "optuna_storage" in self.__dict__:
            self.optuna_storage.engine.dispose()

    # -- leases ------------------------------------------------------------------------------------------
    @contextmanager
    def proposal_lock(self, study_name: str) -> Iterator[None]:
        """Hold the study's proposal lock: workers make and publish proposals one at a time."""
        with proposal_lock(self.engine, study_name):
            yield

    def get_or_compute_artifact(
        self,
        key: str,
        *,
        kind: str,
        model_fingerprint: str,
        settings: dict[str, Any],
        compute: Callable[[], bytes],
        on_wait: Callable[[str], None] | None = None,
        poll_s: float = 1.0,
    ) -> tuple[bytes, bool]:
        """The artifact stored under ``key``, computing and storing it once if no worker has (see
        :class:`storage._leases.ArtifactClaims`); returns ``(blob, computed_here)``."""
        return self.claims.get_or_compute(
            key,
            kind=kind,
            model_fingerprint=model_fingerprint,
            settings=settings,
            compute=compute,
            on_wait=on_wait,
            poll_s=poll_s,
        )

    def artifact(self, key: str) -> bytes | None:
        """The artifact stored under ``key``, or None if it is absent or still being computed: a read that never
        waits."""
        return self.claims.ready(key)

    # -- models ------------------------------------------------------------------------------------------
    def register_model(self, identity: dict[str, Any], site_weights: list[list[float]]) -> None:
        """Record a model once; workers starting together may race, and the loser's insert is a no-op."""
        with Session(self.engine) as session:
            if session.get(ModelRecord, identity["fingerprint"]) is not None:
                return
            session.add(
                ModelRecord(
                    fingerprint=identity["fingerprint"],
                    name=identity["name"],
                    source=identity["source"],
                    architecture=identity["architecture"],
                    n_blocks=identity["n_blocks"],
                    site_weights=json.dumps(site_weights),
                )
            )
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                if session.get(ModelRecord, identity["fingerprint"]) is None:
                    raise

    # -- studies -----------------------------------------------------------------------------------------
    def register_study(self, name: str, config: dict[str, Any], config_hash: str) -> bool:
        """Record a study's configuration; True if new, False if it exists with the same configuration."""
        with Session(self.engine) as session:
            existing = session.get(StudyRecord, name)
            if existing is None:
                session.add(StudyRecord(name=name, config=json.dumps(config, sort_keys=True), config_hash=config_hash))
                try:
                    session.commit()
                    return True
                except IntegrityError:
                    session.rollback()
                    existing = session.get(StudyRecord, name)
            assert existing is not None
            if existing.config_hash != config_hash:
                raise StorageError(
                    f"A study named {name!r} already exists with a different configuration; choose another name."
                )
            return False

    def study_config(self, name: str) -> dict[str, Any]:
        """The canonical configuration study ``name`` was registered with; a study the database does not hold is
        refused, naming those it does."""
        record = None
        if self.has_schema:
            with Session(self.engine) as session:
                record = session.get(StudyRecord, name)
        if record is None:
            known = self.study_names()
            hint = f" (known: {', '.join(known)})" if known else " (it holds no studies)"
            raise StorageError(f"No study named {name!r} in {self.masked_url}{hint}.")
        return json.loads(record.config)

    def study_names(self) -> list[str]:
        """The names of the studies the database holds, sorted (none before the schema exists)."""
        if not self.has_schema:
            return []
        with Session(self.engine) as session:
            return list(session.scalars(select(StudyRecord.name).order_by(StudyRecord.name)))

    def forget_study(self, name: str) -> None:
        """Remove our records of study ``name`` (its configuration and exports; calibrations stay shared)."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(ExportRecord).where(ExportRecord.study_name == name))
            session.execute(delete(StudyRecord).where(StudyRecord.name == name))

    # -- exports -----------------------------------------------------------------------------------------
    def record_export(
        self, *, study_name: str, trial_number: int, path: str, heldout_perplexity: float | None, lookup: str
    ) -> None:
        """Record a lookup exported from a study (where it went and the lookup document itself), so the database keeps
        what was shipped from it."""
        with Session(self.engine) as session, session.begin():
            session.add(
                ExportRecord(
                    study_name=study_name,
                    trial_number=trial_number,
                    path=path,
                    heldout_perplexity=heldout_perplexity,
                    lookup=lookup,
                )
            )
