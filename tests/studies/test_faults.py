"""Faults: the database restarting under a running study, a process killed while exporting, and passwords
kept out of every output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from allocator import atomic_write_directory
from allocator.search.trial_attributes import evaluated_vector
from storage import Database
from studies.cli import cli
from tests.studies.conftest import SPARSEALLOC
from tests.studies.test_workers import _trials


def _restart_postgres() -> None:
    version = next(iter(os.listdir("/etc/postgresql")))
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, capture_output=True
    )


@pytest.mark.postgres
def test_postgres_restart_mid_study_loses_nothing(postgres_url, write_config, processes):
    path = write_config(trials=8, data={"seq_len": 64, "calibration_sequences": 32})
    processes.run("study", "create", str(path), "--storage", postgres_url)
    worker = processes.start("worker", "tiny", "--storage", postgres_url)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if sum(t.state == TrialState.COMPLETE for t in _trials(postgres_url)) >= 2:
            break
        time.sleep(0.1)
    finished_before = {t.number: t.value for t in _trials(postgres_url) if t.state == TrialState.COMPLETE}
    _restart_postgres()
    try:
        output, _ = worker.communicate(timeout=400)
    finally:
        processes.kill_all()
    # The worker reconnects and finishes; were the server away too long it would stop with one sentence.
    assert worker.returncode in (0, 2), output
    if worker.returncode == 2:
        assert output.strip().splitlines()[-1].startswith("error: The database"), output
    processes.run("study", "resume", "tiny", "--storage", postgres_url)
    trials = _trials(postgres_url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert {t.number: t.value for t in complete if t.number in finished_before} == finished_before
    vectors = [tuple(evaluated_vector(t)) for t in complete]
    assert len(vectors) == len(set(vectors))


_SLOW_FILL = """
import sys, time
from pathlib import Path
from allocator import atomic_write_directory

def fill(directory: Path) -> None:
    for i in range(50):
        (directory / f"part-{i}.txt").write_text(sys.argv[2])
        time.sleep(0.02)

atomic_write_directory(sys.argv[1], fill)
"""


def _complete_export(directory: Path) -> str | None:
    parts = sorted(directory.glob("part-*.txt")) if directory.exists() else []
    if not directory.exists():
        return None
    contents = {p.read_text() for p in parts}
    assert len(parts) == 50 and len(contents) == 1, f"partial directory: {len(parts)} parts, {contents}"
    return contents.pop()


@pytest.mark.parametrize("delay", [0.05, 0.4, 0.8, 0.99])
def test_a_killed_export_leaves_the_old_or_the_new_directory(tmp_path, delay):
    target = tmp_path / "export"
    atomic_write_directory(target, lambda d: [(d / f"part-{i}.txt").write_text("old") for i in range(50)])
    process = subprocess.Popen([sys.executable, "-c", _SLOW_FILL, str(target), "new"])
    try:
        time.sleep(delay + 0.5)  # ~0.5 s of interpreter start, then about 1 s of writing
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert _complete_export(target) in ("old", "new")


def test_export_crash_inside_fill_keeps_the_previous_export(tmp_path):
    target = tmp_path / "export"
    atomic_write_directory(target, lambda d: (d / "lookup.json").write_text("{}"))

    def crash(directory: Path) -> None:
        (directory / "lookup.json").write_text('{"half": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_directory(target, crash)
    assert json.loads((target / "lookup.json").read_text()) == {}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_directory(tmp_path / "out", lambda d: (d / "f.json").write_text("{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "out" / "f.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("form", "secret"),
    [("credentials", "s3cr3t-Passw0rd"), ("query", "s3cr3t-Passw0rd"), ("raw @", "s3cr@t-Passw0rd")],
)
def test_passwords_never_appear_in_any_output(postgres_url, write_config, tmp_path, form, secret):
    # The server trusts local connections, so any password works: give one and look for it everywhere.
    in_query = f"{postgres_url}?password={secret}"
    url = in_query if form == "query" else postgres_url.replace("root@", f"root:{secret}@")
    path = write_config(trials=2)
    outputs = []
    for args in (
        ["study", "create", str(path)],
        ["-v", "study", "run", "tiny"],
        ["study", "status", "tiny"],
        ["study", "list"],
        ["study", "status", "missing"],
        ["-v", "study", "export", "tiny", "--out", str(tmp_path / "out")],
    ):
        result = CliRunner().invoke(cli, [*args, "--storage", url])
        outputs.append(result.output)
    bad_port = url.replace(":5432/", ":1/")
    outputs.append(CliRunner().invoke(cli, ["study", "list", "--storage", bad_port]).output)
    logs = subprocess.run(
        [SPARSEALLOC, "-v", "study", "status", "tiny", "--storage", url], capture_output=True, text=True
    )
    outputs += [logs.stdout, logs.stderr]
    exported = (tmp_path / "out" / "lookup.json").read_text()
    fragments = {secret, *secret.split("@")} - {""}  # not even part of it (a raw @ once leaked the tail)
    assert all(fragment not in text for fragment in fragments for text in [*outputs, exported])
    assert "***" in outputs[2]  # status shows the masked URL
    stored = optuna.load_study(study_name="tiny", storage=Database(url, create=False).optuna_storage)
    assert secret not in json.dumps(stored.user_attrs) + json.dumps([t.user_attrs for t in stored.trials])
