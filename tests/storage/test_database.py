from __future__ import annotations

import threading

import optuna
import pytest
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from storage import SCHEMA_VERSION, Database, Meta, ModelRecord, StorageError


def test_opens_creates_schema_and_optuna_reads_it(storage_url):
    database = Database(storage_url)
    assert database.study_names() == []
    study = optuna.create_study(storage=database.optuna_storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = Database(storage_url)  # reopening checks the version and creates nothing twice
    if storage_url.startswith("sqlite"):
        with again.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert optuna.load_study(study_name="s", storage=again.url).trials[1].state.is_finished()


def test_newer_schema_is_refused(storage_url):
    database = Database(storage_url)
    with Session(database.engine) as session, session.begin():
        session.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(StorageError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this sparsealloc"):
        Database(storage_url)


def test_unknown_schema_is_refused(storage_url):
    database = Database(storage_url)
    with Session(database.engine) as session, session.begin():
        session.execute(update(Meta).where(Meta.key == "schema_version").values(value="banana"))
    with pytest.raises(StorageError, match="unknown sparsealloc schema"):
        Database(storage_url)


def test_study_registration_refuses_a_different_config(storage_url):
    database = Database(storage_url)
    assert database.register_study("a", {"x": 1}, "h1") is True
    assert database.register_study("a", {"x": 1}, "h1") is False
    with pytest.raises(StorageError, match="already exists with a different configuration"):
        database.register_study("a", {"x": 2}, "h2")
    assert database.study_config("a") == {"x": 1}
    with pytest.raises(StorageError, match=r"No study named 'b' .* \(known: a\)"):
        database.study_config("b")


def test_artifact_is_computed_once_by_concurrent_workers(storage_url):
    database = Database(storage_url)
    calls = []
    results = []

    def compute() -> bytes:
        calls.append(1)
        threading.Event().wait(0.5)
        return b"histograms"

    def worker() -> None:
        blob, _ = Database(storage_url).get_or_compute_artifact(
            "k", kind="histograms", model_fingerprint="f", settings={}, compute=compute, poll_s=0.05
        )
        results.append(blob)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1] and results == [b"histograms"] * 3
    assert database.artifact("k") == b"histograms"


def test_failed_computation_releases_the_claim(storage_url):
    database = Database(storage_url)

    def broken() -> bytes:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        database.get_or_compute_artifact("k", kind="greedy", model_fingerprint="f", settings={}, compute=broken)
    blob, computed = database.get_or_compute_artifact(
        "k", kind="greedy", model_fingerprint="f", settings={}, compute=lambda: b"ok"
    )
    assert (blob, computed) == (b"ok", True)


def test_unreachable_database_is_one_sentence_without_password():
    with pytest.raises(StorageError, match="Cannot open the database") as caught:
        Database("postgresql+psycopg://root:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(caught.value)


def test_proposal_lock_is_mutually_exclusive_across_connections(storage_url):
    inside: list[int] = []
    overlaps: list[int] = []

    def propose(worker: int) -> None:
        database = Database(storage_url)  # its own engine, as another process would have
        for _ in range(5):
            with database.proposal_lock("s"):
                inside.append(worker)
                if len(inside) > 1:
                    overlaps.append(worker)
                threading.Event().wait(0.01)
                inside.remove(worker)

    threads = [threading.Thread(target=propose, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []


def test_several_processes_may_create_a_new_database_at_once(storage_url):
    errors: list[BaseException] = []

    def open_database() -> None:
        try:
            Database(storage_url)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_database) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Database(storage_url).study_names() == []


def test_a_model_registered_by_another_worker_in_between_is_not_an_error(storage_url):
    """Workers that start together both see no model row; the one whose insert loses must carry on."""
    identity = {"fingerprint": "f", "name": "m", "source": "s", "architecture": "a", "n_blocks": 2}
    winner, loser = Database(storage_url), Database(storage_url)

    raced = []

    def register_first(connection, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("INSERT INTO SPARSEALLOC_MODELS") and not raced:
            raced.append(True)
            winner.register_model(identity, [[1.0]])

    event.listen(loser.engine, "before_cursor_execute", register_first)
    loser.register_model(identity, [[2.0]])
    with Session(winner.engine) as session:
        assert raced and session.get(ModelRecord, "f").site_weights == "[[1.0]]"
