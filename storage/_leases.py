"""Leases between workers: the study's proposal lock, and claims on stored artifacts (compute once, share).

Proposal lock: workers make and publish proposals one at a time, so two never propose the same point.
PostgreSQL: a session-level advisory lock (the server releases it when the connection dies). SQLite: an
exclusive ``flock`` on a file beside the database (SQLite is one machine; the kernel releases it when the
process dies).

Artifact claims: the first worker that needs an artifact (a calibration, greedy tables, a dense reference)
claims its key with a row in state ``computing`` and computes it; the others wait and reuse the result. The
claimant stamps the row every ``heartbeat_s`` seconds; a claim whose stamp is older than ``stale_s`` belongs
to a dead worker and is taken over. Stamps are written and compared with the **database's** clock
(:func:`storage._clock.database_now`), never a worker's own, so workers whose clocks disagree by minutes
still agree on which claims are alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage._clock import as_utc, database_now
from storage._errors import CONNECTION_ERRORS
from storage._tables import CalibrationRecord
from storage._url import is_sqlite, sqlite_path

CLAIM_HEARTBEAT_S = 5.0
CLAIM_STALE_S = 30.0


def owner_id() -> str:
    """Who holds a claim: host, process and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@contextmanager
def proposal_lock(engine: Engine, study_name: str) -> Iterator[None]:
    """Hold the study's proposal lock for a short critical section (read the history, propose, publish)."""
    url = engine.url.render_as_string(hide_password=False)
    if is_sqlite(url):
        database_file = sqlite_path(url)
        assert database_file is not None
        with open(f"{database_file}.proposal-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    key = int.from_bytes(hashlib.sha256(f"sparsealloc:{study_name}".encode()).digest()[:8], "big", signed=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):  # a lost connection has released it already
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()


class ArtifactClaims:
    """Compute-once artifacts in ``sparsealloc_calibrations``, leased on the database clock.

    Args:
        engine: The database.
        heartbeat_s: How often a claimant re-stamps its claim.
        stale_s: How old (database clock) a claim's stamp must be before another worker takes it over.
    """

    def __init__(
        self, engine: Engine, *, heartbeat_s: float = CLAIM_HEARTBEAT_S, stale_s: float = CLAIM_STALE_S
    ) -> None:
        self.engine = engine
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s

    def ready(self, key: str) -> bytes | None:
        """The stored artifact, or None if it is absent or still being computed."""
        with Session(self.engine) as session:
            record = session.get(CalibrationRecord, key)
            return record.blob if record is not None and record.status == "ready" else None

    def get_or_compute(
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

        Returns ``(blob, computed_here)``. A failed computation releases its claim.
        """
        owner = owner_id()
        announced = False
        while True:
            with Session(self.engine) as session:
                record = session.get(CalibrationRecord, key)
                if record is not None and record.status == "ready":
                    assert record.blob is not None
                    return record.blob, False
                if record is None:
                    if self._claim_new(session, key, kind, model_fingerprint, settings, owner):
                        return self._compute_claimed(key, owner, compute), True
                    continue  # another worker claimed it first
                if self.take_over_if_stale(key, dead_owner=record.owner, owner=owner):
                    return self._compute_claimed(key, owner, compute), True
            if on_wait is not None and not announced:
                on_wait(f"waiting for another worker to finish the {kind} ({key[:12]})")
                announced = True
            time.sleep(poll_s)

    def _claim_new(
        self, session: Session, key: str, kind: str, model_fingerprint: str, settings: dict[str, Any], owner: str
    ) -> bool:
        session.add(
            CalibrationRecord(
                key=key,
                kind=kind,
                model_fingerprint=model_fingerprint,
                settings=json.dumps(settings, sort_keys=True),
                status="computing",
                owner=owner,
                claimed_at=database_now(session.connection()),
            )
        )
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
        return True

    def take_over_if_stale(self, key: str, *, dead_owner: str, owner: str) -> bool:
        """Take the claim of ``dead_owner`` on ``key`` if its stamp is older than ``stale_s`` (database clock).

        The takeover is one conditional update, so of several workers that find the same dead claim
        exactly one wins it.
        """
        with Session(self.engine) as session, session.begin():
            now = database_now(session.connection())
            record = session.get(CalibrationRecord, key)
            if record is None or record.status != "computing" or record.owner != dead_owner:
                return False
            if now - as_utc(record.claimed_at) <= timedelta(seconds=self.stale_s):
                return False
            taken = session.execute(
                update(CalibrationRecord)
                .where(CalibrationRecord.key == key, CalibrationRecord.owner == dead_owner)
                .where(CalibrationRecord.status == "computing")
                .values(owner=owner, claimed_at=now)
            )
            return taken.rowcount == 1

    def stamp(self, key: str, owner: str) -> None:
        """Renew ``owner``'s claim on ``key`` with the database's current time."""
        with Session(self.engine) as session, session.begin():
            now = database_now(session.connection())
            session.execute(
                update(CalibrationRecord)
                .where(CalibrationRecord.key == key, CalibrationRecord.owner == owner)
                .values(claimed_at=now)
            )

    def _compute_claimed(self, key: str, owner: str, compute: Callable[[], bytes]) -> bytes:
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.heartbeat_s):
                with contextlib.suppress(*CONNECTION_ERRORS):  # a missed stamp is retried at the next beat
                    self.stamp(key, owner)

        thread = threading.Thread(target=heartbeat, name="sparsealloc-claim-heartbeat", daemon=True)
        thread.start()
        started = time.perf_counter()
        try:
            blob = compute()
        except BaseException:
            stop.set()
            thread.join()
            self._release(key, owner)
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

    def _release(self, key: str, owner: str) -> None:
        with Session(self.engine) as session, session.begin():
            record = session.get(CalibrationRecord, key)
            if record is not None and record.owner == owner and record.status == "computing":
                session.delete(record)
