"""`sparsealloc worker NAME --wait SECONDS`: a worker started before its study exists."""

from __future__ import annotations

import time

from click.testing import CliRunner

from studies.cli import cli


def test_a_worker_started_before_study_create_joins_the_study_once_it_is_created(storage_url, write_config, processes):
    worker = processes.start("worker", "tiny", "--storage", storage_url, "--wait", "600")
    path = write_config(trials=2)
    assert worker.poll() is None  # nothing to join yet: it waits (for SQLite, before the database file exists)
    processes.run("study", "create", str(path), "--storage", storage_url)
    output = processes.finish(worker)
    assert "study 'tiny': 2/2 trials complete (2 here)" in output, output


def test_a_worker_gives_up_at_its_deadline_in_one_sentence(storage_url):
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["worker", "tiny", "--storage", storage_url, "--wait", "1.5"])
    assert time.monotonic() - started >= 1.5  # it waited, however fast the machine
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert ("No sparsealloc database at" if storage_url.startswith("sqlite") else "No study named 'tiny'") in lines[0]
