"""Other processes and users at a study's database: a delete while a trial runs, Ctrl-C or SIGTERM inside a
trial, two `study create` at once on a new SQLite file, and a user who may only read the database (issue 23)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy import create_engine, text

from tests.studies.conftest import SPARSEALLOC, tiny_config
from tests.studies.test_bad_input import assert_refused, run
from tests.studies.test_workers import _assert_no_duplicates, _trials

DELETED = "error: Study 'tiny' was deleted while this process ran it; nothing more is stored."
# Trials long enough to be caught running, as in tests/studies/test_workers.py.
SLOW = {"data": {"seq_len": 64, "calibration_sequences": 48}}


def _quiet(url: str) -> bool:
    """Whether no connection to the database holds a transaction open (a write lock another process would
    wait for): SQLite grants an immediate write lock at once, PostgreSQL lists no session inside a transaction."""
    if url.startswith("sqlite"):
        import sqlite3

        connection = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            connection.close()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            busy = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state <> 'idle'"
                )
            ).scalar_one()
        return busy == 0
    finally:
        engine.dispose()


def _freeze_inside_a_trial(process: subprocess.Popen, url: str) -> optuna.trial.FrozenTrial | None:
    """SIGSTOP ``process`` while it evaluates a trial and holds no transaction open; returns that trial.

    The process is left stopped (the caller sends SIGCONT): whatever the test does meanwhile meets a trial
    that is RUNNING with a fresh heartbeat, and never waits for a lock the stopped process holds. Each look
    happens with the process stopped, so what is seen is still true when the look ends.
    """
    storage = optuna.storages.RDBStorage(url)
    try:
        study_id = storage.get_study_id_from_name("tiny")
        deadline = time.monotonic() + 240  # generous: the states are waited for, never a fixed time
        while time.monotonic() < deadline and process.poll() is None:
            os.kill(process.pid, signal.SIGSTOP)
            trials = storage.get_all_trials(study_id, deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING and "vector" in t.user_attrs]
            if running and _quiet(url):
                return running[0]
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.01)
        return None
    finally:
        storage.engine.dispose()


def _start_run(processes, write_config, url: str, trials: int) -> subprocess.Popen:
    path = write_config(trials=trials, **SLOW)
    processes.run("study", "create", str(path), "--storage", url)
    return processes.start("study", "run", "tiny", "--storage", url)


def _one_sentence(output: str, sentence: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == [sentence], output
    assert lines[-1] == sentence, output
    assert "Traceback" not in output, output


# -- item 2: deleting a study while a process runs it ------------------------------------------------------------
def test_delete_is_refused_while_a_trial_runs_and_the_run_goes_on(storage_url, write_config, processes):
    process = _start_run(processes, write_config, storage_url, trials=5)
    victim = _freeze_inside_a_trial(process, storage_url)
    assert victim is not None, process.communicate()[0]
    try:
        refused = run("study", "delete", "tiny", "--yes", "--storage", storage_url)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert_refused(refused, f"Study 'tiny' has trial(s) {victim.number} running in another process")
    assert "--force" in refused.stderr and "Ctrl-C" in refused.stderr
    output = processes.finish(process)
    assert "Traceback" not in output
    trials = _trials(storage_url)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
    assert not [t for t in trials if t.state in (TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)]
    _assert_no_duplicates(trials)
    finished = run("study", "delete", "tiny", "--yes", "--storage", storage_url)  # nothing runs now
    assert finished.exit_code == 0 and "deleted study 'tiny'" in finished.output, finished.output


def test_delete_force_while_a_trial_runs_ends_that_process_in_one_sentence(storage_url, write_config, processes):
    process = _start_run(processes, write_config, storage_url, trials=5)
    victim = _freeze_inside_a_trial(process, storage_url)
    assert victim is not None, process.communicate()[0]
    try:
        forced = run("study", "delete", "tiny", "--yes", "--force", "--storage", storage_url)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert forced.exit_code == 0 and "deleted study 'tiny'" in forced.output, forced.output
    _one_sentence(processes.finish(process, expect=2), DELETED)
    # Nothing was written for the deleted study after it went: no study, no trial, no heartbeat.
    engine = create_engine(storage_url)
    try:
        with engine.connect() as connection:
            for table in ("studies", "trials", "trial_heartbeats", "trial_user_attributes", "trial_params"):
                assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0, table
    finally:
        engine.dispose()
    assert_refused(run("study", "status", "tiny", "--storage", storage_url), "No study named 'tiny'")


# -- item 3: Ctrl-C or SIGTERM inside a trial --------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_inside_a_trial_is_one_line_and_resume_finishes(storage_url, write_config, processes, signum):
    process = _start_run(processes, write_config, storage_url, trials=4)
    victim = _freeze_inside_a_trial(process, storage_url)
    assert victim is not None, process.communicate()[0]
    os.kill(process.pid, signum)  # delivered as the process continues, wherever it then is
    os.kill(process.pid, signal.SIGCONT)
    output = processes.finish(process, expect=130)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert "interrupted: the running trial was re-enqueued; `study resume` continues." in output
    assert "error:" not in output and not re.search(r"Trial \d+ failed", output), output

    processes.run("study", "resume", "tiny", "--storage", storage_url)
    trials = _trials(storage_url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    _assert_no_duplicates(trials)
    (interrupted,) = [t for t in trials if t.number == victim.number]
    if interrupted.state == TrialState.FAIL:  # stopped inside its objective: retried once, same vector
        retries = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
        assert len(retries) == 1 and retries[0].user_attrs["vector"] == victim.user_attrs["vector"]
    else:  # the signal came as its result was being stored: it finished, and the run stopped after it
        assert interrupted.state == TrialState.COMPLETE


# -- item 6: several `study create` at once on a new SQLite file --------------------------------------------------
@pytest.mark.parametrize("same_config", [True, False], ids=["same-config", "different-configs"])
def test_creates_at_once_on_a_new_sqlite_file(tmp_path, trained_tiny_dir, processes, same_config):
    paths = [tmp_path / f"{index}.yaml" for index in range(3 if same_config else 2)]
    for index, path in enumerate(paths):
        trials = 4 if same_config or index == 0 else 5
        path.write_text(yaml.safe_dump(tiny_config(trained_tiny_dir, trials=trials)))
    # Two at once lost the race to create the schema 1 time in 3; three at once race in three pairs.
    for round_ in range(6 if same_config else 2):
        url = f"sqlite:///{tmp_path / f'round-{round_}.db'}"
        started = [processes.start("study", "create", str(path), "--storage", url) for path in paths]
        outputs = [process.communicate(timeout=300)[0] for process in started]  # killed by `processes` if late
        codes = [process.returncode for process in started]
        assert "Traceback" not in "".join(outputs), outputs
        if same_config:
            assert codes == [0, 0, 0], outputs
        else:
            assert sorted(codes) == [0, 2], outputs
            refusal = outputs[codes.index(2)].strip().splitlines()[-1]
            assert refusal == (
                "error: A study named 'tiny' already exists with a different configuration; choose another name."
            ), outputs
        status = run("study", "status", "tiny", "--storage", url)
        assert status.exit_code == 0, status.output
        assert "0/4 complete" in status.output or (not same_config and "0/5 complete" in status.output)


# -- item 6: a database this user may only read ----------------------------------------------------------------
@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder any user may enter (pytest's own tmp_path is closed to all but root), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="sparsealloc-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for inner in (path, *path.rglob("*")):
            with contextlib.suppress(OSError):
                inner.chmod(0o755 if inner.is_dir() else 0o644)
        shutil.rmtree(path, ignore_errors=True)


def _as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``sparsealloc`` as the unprivileged user ``nobody`` (root ignores file permissions)."""
    environment = {**os.environ, "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SPARSEALLOC, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("folder_mode", [0o555, 0o777], ids=["read-only-folder", "writable-folder"])
def test_a_database_this_user_may_only_read_is_listed_and_shown(shared_dir, write_config, processes, folder_mode):
    folder = shared_dir / "db"
    folder.mkdir()
    database = folder / "study.db"
    url = f"sqlite:///{database}"
    processes.run("study", "create", str(write_config(trials=1)), "--storage", url)
    processes.run("study", "run", "tiny", "--storage", url)
    # WAL mode: its -wal and -shm files went with the last writer; the run left its proposal lock.
    before = sorted(p.name for p in folder.iterdir())
    assert before == ["study.db", "study.db.proposal-lock"]
    database.chmod(0o444)
    folder.chmod(folder_mode)
    digest = hashlib.sha256(database.read_bytes()).hexdigest()

    listed = _as_nobody("study", "list", "--storage", url, cwd=shared_dir)
    assert listed.returncode == 0, listed.stderr
    assert "tiny" in listed.stdout and "1/1" in listed.stdout, listed.stdout
    shown = _as_nobody("study", "status", "tiny", "--storage", url, cwd=shared_dir)
    assert shown.returncode == 0, shown.stderr
    assert "1/1 complete, 0 running" in shown.stdout, shown.stdout
    refused = _as_nobody("study", "delete", "tiny", "--yes", "--storage", url, cwd=shared_dir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "attempt to write a readonly database" in refused.stderr.strip().splitlines()[-1], refused.stderr

    assert sorted(p.name for p in folder.iterdir()) == before  # nothing left beside it, no -shm or -wal
    assert hashlib.sha256(database.read_bytes()).hexdigest() == digest
    assert "1/1 complete" in run("study", "status", "tiny", "--storage", url).output  # root still reads it
