"""The study database: an engine on one URL, the schema check, our tables and Optuna's storage beside them.

SQLite runs in WAL mode with a 30 s busy timeout: with Optuna's RDB storage, six processes and a 10 ms
timeout left failed trials and trials stuck in RUNNING, while a 30 s timeout completed 150 of 150.
PostgreSQL connections are pinged before use, so a restarted server costs a reconnect, not an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from allocator._errors import StorageError, first_line
from storage._tables import (
    SCHEMA_VERSION,
    Base,
    CalibrationRecord,
    ExportRecord,
    Meta,
    ModelRecord,
    StudyRecord,
    utc_now,
)
from storage._url import is_sqlite, mask_url, resolve_url

if TYPE_CHECKING:
    import optuna

SQLITE_BUSY_TIMEOUT_S = 30
HEARTBEAT_INTERVAL_S = 5
HEARTBEAT_GRACE_S = 20
CLAIM_HEARTBEAT_S = 5.0
CLAIM_STALE_S = 30.0


#: Errors of a lost database connection (server restart, network): the runner reconnects and goes on.
CONNECTION_ERRORS = (OperationalError, InterfaceError)


def is_connection_error(error: BaseException) -> bool:
    """True if ``error`` or anything it was raised from is a lost database connection.

    Optuna wraps driver errors (``StorageInternalError``) and, when storage fails while it records a
    trial's failure, can raise an unrelated error from its own error path; the cause chain still holds
    the driver's error.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, CONNECTION_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _engine_kwargs(url: str) -> dict[str, Any]:
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}


class Database:
    """One study database (SQLite or PostgreSQL): our tables plus Optuna's RDB storage on the same URL."""

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)
        self.masked_url = mask_url(self.url)
        self.engine = self._create_engine()
        self._check_schema()

    # -- connection and schema ---------------------------------------------------------------------------
    def _create_engine(self) -> Engine:
        engine = create_engine(self.url, **_engine_kwargs(self.url))
        if is_sqlite(self.url):

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(connection: Any, _record: Any) -> None:
                cursor = connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
                # WAL is a property of the file (Optuna's connections get it too): switch once. The switch needs
                # the file to itself and is not retried by the busy timeout, so a busy file is left to the next
                # connection that finds it free.
                if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    with contextlib.suppress(sqlite3.OperationalError):
                        cursor.execute("PRAGMA journal_mode=WAL")
                cursor.close()

        return engine

    def _unreachable(self, error: Exception) -> StorageError:
        return StorageError(f"Cannot open the database {self.masked_url}: {first_line(error)}")

    def _check_schema(self) -> None:
        """Create our tables in a new database, or check the schema version of an existing one.

        Several workers may open a new database at the same moment: whoever loses the race to create the
        tables reads the schema again (a version row not yet written means another process is creating it).
        """
        row: str | None = None
        for _ in range(20):
            try:
                with self.engine.begin() as connection:
                    tables = set(inspect(connection).get_table_names())
                    row = (
                        connection.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
                        if Meta.__tablename__ in tables
                        else None
                    )
            except (OperationalError, ProgrammingError) as error:
                raise self._unreachable(error) from error
            if Meta.__tablename__ in tables:
                if row is None:
                    time.sleep(0.1)  # another process is creating the schema
                    continue
                self._check_version(row)
                return
            if any(table.startswith("sparsealloc_") for table in tables):
                raise StorageError(
                    f"The database {self.masked_url} has sparsealloc tables but no schema version; "
                    "it was not written by this tool."
                )
            try:
                Base.metadata.create_all(self.engine)
                with Session(self.engine) as session, session.begin():
                    session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return
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

    @cached_property
    def optuna_storage(self) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage on the same URL, with heartbeats and one retry of trials that went stale."""
        import optuna
        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
            try:
                return optuna.storages.RDBStorage(
                    self.url,
                    engine_kwargs=_engine_kwargs(self.url),
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=HEARTBEAT_GRACE_S,
                    heartbeat_stale_trial_callback=callback,
                )
            except (OperationalError, ProgrammingError) as error:
                raise self._unreachable(error) from error

    def dispose(self) -> None:
        self.engine.dispose()
        if "optuna_storage" in self.__dict__:
            self.optuna_storage.engine.dispose()

    # -- proposal lock -----------------------------------------------------------------------------------
    @contextmanager
    def proposal_lock(self, study_name: str) -> Iterator[None]:
        """Hold the study's proposal lock: workers make and publish proposals one at a time.

        PostgreSQL: a session-level advisory lock (released by the server if the process dies). SQLite: an
        exclusive ``flock`` on a file beside the database (SQLite is one machine; the kernel releases it if the
        process dies). A short critical section, so the database's own write lock is not held meanwhile.
        """
        if is_sqlite(self.url):
            database_file = self.engine.url.database
            assert database_file is not None
            with open(f"{database_file}.proposal-lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        key = int.from_bytes(hashlib.sha256(f"sparsealloc:{study_name}".encode()).digest()[:8], "big", signed=True)
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                with contextlib.suppress(*CONNECTION_ERRORS):  # a lost connection has released it already
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()

    # -- models ------------------------------------------------------------------------------------------
    def register_model(self, identity: dict[str, Any], site_weights: list[list[float]]) -> None:
        with Session(self.engine) as session, session.begin():
            if session.get(ModelRecord, identity["fingerprint"]) is None:
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
        with Session(self.engine) as session:
            record = session.get(StudyRecord, name)
            if record is None:
                known = self.study_names()
                hint = f" (known: {', '.join(known)})" if known else " (it holds no studies)"
                raise StorageError(f"No study named {name!r} in {self.masked_url}{hint}.")
            return json.loads(record.config)

    def study_names(self) -> list[str]:
        with Session(self.engine) as session:
            return list(session.scalars(select(StudyRecord.name).order_by(StudyRecord.name)))

    # -- calibration artifacts ---------------------------------------------------------------------------
    def artifact(self, key: str) -> bytes | None:
        with Session(self.engine) as session:
            record = session.get(CalibrationRecord, key)
            return record.blob if record is not None and record.status == "ready" else None

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
        """The artifact stored under ``key``, computing and storing it once if no worker has.

        Returns ``(blob, computed_here)``. The first worker claims the key (a row in state ``computing``,
        kept fresh by a heartbeat) and computes; the others wait for it and reuse the result. A claim
        whose owner died (no heartbeat for 30 s) is taken over; a failed computation releases its claim.
        """
        owner = _owner()
        announced = False
        while True:
            with Session(self.engine) as session:
                record = session.get(CalibrationRecord, key)
                if record is not None and record.status == "ready":
                    assert record.blob is not None
                    return record.blob, False
                if record is None:
                    session.add(
                        CalibrationRecord(
                            key=key,
                            kind=kind,
                            model_fingerprint=model_fingerprint,
                            settings=json.dumps(settings, sort_keys=True),
                            status="computing",
                            owner=owner,
                            claimed_at=utc_now(),
                        )
                    )
                    try:
                        session.commit()
                    except IntegrityError:
                        continue  # another worker claimed it first
                    return self._compute_claimed(key, owner, compute), True
                claimed_at = record.claimed_at if record.claimed_at.tzinfo else record.claimed_at.replace(tzinfo=UTC)
                if datetime.now(UTC) - claimed_at > timedelta(seconds=CLAIM_STALE_S):
                    taken = session.execute(
                        update(CalibrationRecord)
                        .where(CalibrationRecord.key == key, CalibrationRecord.owner == record.owner)
                        .where(CalibrationRecord.status == "computing")
                        .values(owner=owner, claimed_at=utc_now())
                    )
                    session.commit()
                    if taken.rowcount == 1:
                        return self._compute_claimed(key, owner, compute), True
                    continue
            if on_wait is not None and not announced:
                on_wait(f"waiting for another worker to finish the {kind} ({key[:12]})")
                announced = True
            time.sleep(poll_s)

    def _compute_claimed(self, key: str, owner: str, compute: Callable[[], bytes]) -> bytes:
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(CLAIM_HEARTBEAT_S):
                with Session(self.engine) as session, session.begin():
                    session.execute(
                        update(CalibrationRecord)
                        .where(CalibrationRecord.key == key, CalibrationRecord.owner == owner)
                        .values(claimed_at=utc_now())
                    )

        thread = threading.Thread(target=heartbeat, name="sparsealloc-claim-heartbeat", daemon=True)
        thread.start()
        started = time.perf_counter()
        try:
            blob = compute()
        except BaseException:
            stop.set()
            thread.join()
            with Session(self.engine) as session, session.begin():
                record = session.get(CalibrationRecord, key)
                if record is not None and record.owner == owner and record.status == "computing":
                    session.delete(record)
            raise
        stop.set()
        thread.join()
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(CalibrationRecord)
                .where(CalibrationRecord.key == key)
                .values(status="ready", blob=blob, seconds=time.perf_counter() - started, owner=owner)
            )
        return blob

    # -- exports -----------------------------------------------------------------------------------------
    def record_export(
        self, *, study_name: str, trial_number: int, path: str, heldout_perplexity: float | None, lookup: str
    ) -> None:
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

    def exports(self, study_name: str) -> list[ExportRecord]:
        with Session(self.engine) as session:
            return list(
                session.scalars(
                    select(ExportRecord).where(ExportRecord.study_name == study_name).order_by(ExportRecord.id)
                )
            )
