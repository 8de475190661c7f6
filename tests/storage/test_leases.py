"""Leases between workers on the database clock: a dead worker's claim is taken over, a live one never is."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from storage import ArtifactClaims, CalibrationRecord, Database, database_now


def _claim(database: Database, key: str, *, owner: str, age_s: float) -> None:
    """A claim in state `computing` by ``owner``, stamped ``age_s`` seconds ago by the database clock."""
    with Session(database.engine) as session, session.begin():
        stamp = database_now(session.connection()) - timedelta(seconds=age_s)
        session.add(
            CalibrationRecord(
                key=key,
                kind="histograms",
                model_fingerprint="m",
                settings="{}",
                status="computing",
                owner=owner,
                claimed_at=stamp,
            )
        )


def test_the_database_clock_is_read_from_the_server(storage_url):
    database = Database(storage_url)
    with database.engine.connect() as connection:
        first = database_now(connection)
        second = database_now(connection)
    assert first.tzinfo is not None and second >= first


def test_a_dead_workers_claim_is_taken_over_and_computed_once(storage_url):
    database = Database(storage_url)
    _claim(database, "k", owner="dead-host:1:1", age_s=3600)  # no heartbeat for an hour, database time
    calls = []
    blob, computed = database.get_or_compute_artifact(
        "k", kind="histograms", model_fingerprint="m", settings={}, compute=lambda: calls.append(1) or b"new"
    )
    assert (blob, computed, calls) == (b"new", True, [1])
    assert database.artifact("k") == b"new"


def test_of_two_workers_finding_one_dead_claim_exactly_one_takes_it(storage_url):
    database = Database(storage_url)
    _claim(database, "k", owner="dead", age_s=3600)
    claims = ArtifactClaims(database.engine)
    assert claims.take_over_if_stale("k", dead_owner="dead", owner="a") is True
    assert claims.take_over_if_stale("k", dead_owner="dead", owner="b") is False


@pytest.mark.parametrize("age_s", [0.0, 25.0])
def test_a_live_claim_is_not_taken_over(storage_url, age_s):
    """A claim stamped less than `stale_s` ago (database clock) stays with its owner; the waiter reuses the
    owner's result once it is ready, whatever its own clock says."""
    database = Database(storage_url)
    _claim(database, "k", owner="alive", age_s=age_s)
    claims = ArtifactClaims(database.engine, stale_s=30.0)
    assert claims.take_over_if_stale("k", dead_owner="alive", owner="me") is False
    waiting = threading.Event()
    result: list[tuple[bytes, bool]] = []

    def wait_for_it() -> None:
        result.append(
            claims.get_or_compute(
                "k",
                kind="histograms",
                model_fingerprint="m",
                settings={},
                compute=lambda: pytest.fail("a live claim was taken over"),
                on_wait=lambda message: waiting.set(),
                poll_s=0.05,
            )
        )

    thread = threading.Thread(target=wait_for_it)
    thread.start()
    assert waiting.wait(timeout=60)
    with Session(database.engine) as session, session.begin():  # the owner finishes
        session.execute(
            update(CalibrationRecord).where(CalibrationRecord.key == "k").values(status="ready", blob=b"theirs")
        )
    thread.join(timeout=60)
    assert result == [(b"theirs", False)]


def test_a_claimant_restamps_its_claim_with_the_database_clock(storage_url):
    database = Database(storage_url)
    _claim(database, "k", owner="me", age_s=3600)
    claims = ArtifactClaims(database.engine)
    claims.stamp("k", "me")
    with Session(database.engine) as session:
        stamped = session.get(CalibrationRecord, "k").claimed_at
        now = database_now(session.connection())
    stamped = stamped if stamped.tzinfo else stamped.replace(tzinfo=now.tzinfo)
    assert abs((now - stamped).total_seconds()) < 60
    assert claims.take_over_if_stale("k", dead_owner="me", owner="other") is False
