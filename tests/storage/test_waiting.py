"""Waiting for a study another process creates: the state waited for, and the deadline."""

from __future__ import annotations

import time

import optuna
import pytest

from storage import Database, StorageError, study_created, wait_for_study


def _refusal(url: str, name: str = "tiny") -> str:
    with pytest.raises(StorageError) as refused:
        wait_for_study(url, name)  # no wait: the state is read once
    return str(refused.value)


def test_a_missing_study_is_waited_for_until_the_deadline_then_refused_as_without_waiting(storage_url):
    at_once = _refusal(storage_url)
    # SQLite: no database file yet (none is left behind); PostgreSQL: a database without our tables.
    assert ("No sparsealloc database at" if storage_url.startswith("sqlite") else "No study named 'tiny'") in at_once
    started = time.monotonic()
    with pytest.raises(StorageError) as refused:
        wait_for_study(storage_url, "tiny", wait_s=1.5, poll_s=0.2)
    assert time.monotonic() - started >= 1.5  # it waited, whatever the machine's speed
    assert str(refused.value) == at_once


def test_the_state_waited_for_is_the_study_in_our_table_and_in_optunas(storage_url):
    database = Database(storage_url)  # as `study create` begins: our tables and its record, then Optuna's study
    database.register_study("tiny", {"name": "tiny"}, "digest")
    refusal = _refusal(storage_url)
    assert (
        refusal.startswith("Study 'tiny' in ") and "is registered but its trials' storage is not created yet" in refusal
    )
    with pytest.raises(StorageError, match=r"No study named 'other' in .* \(known: tiny\)\."):
        study_created(storage_url, "other")
    optuna.create_study(study_name="tiny", storage=database.optuna_storage)
    opened = wait_for_study(storage_url, "tiny", wait_s=600)  # returns at once: the state holds
    assert opened.study_config("tiny") == {"name": "tiny"} and not opened.create
    opened.dispose()
    database.dispose()
