"""Progress where the output is not a terminal: a line per phase, and a line at least every interval."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from studies import study_progress


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def _wait_for(condition, what: str, deadline_s: float = 120.0) -> None:
    """Wait on a state (the deadline only fails a test that would otherwise hang)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def test_a_phase_that_does_not_advance_still_writes_lines_and_its_start_and_end():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=200)
    with study_progress(console, interval=0.05) as progress:
        task = progress.add_task("Slow phase", total=3)
        progress.advance(task, 1)
        # the injected slow phase: no advance until three lines have said where it stands
        _wait_for(lambda: sum("Slow phase: 1/3 (33%)" in line for line in _lines(stream)) >= 3, "three lines")
        progress.advance(task, 2)
        written = len(_lines(stream))
    lines = _lines(stream)
    assert lines[0] == "Slow phase: started"
    assert re.fullmatch(r"Slow phase: done, 3/3 in \d+:\d\d:\d\d", lines[written - 1]), lines
    assert all(re.search(r"\d+:\d\d:\d\d elapsed", line) for line in lines[1 : written - 1]), lines
    # once the phase is done no further line is written for it, and the writer stops with the display
    assert not any("Slow phase: 3/3" in line for line in lines), lines


def test_a_terminal_gets_bars_and_no_log_lines():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120)
    with study_progress(console, interval=0.01) as progress:
        task = progress.add_task("Bar phase", total=2)
        progress.advance(task, 2)
    assert "Bar phase: started" not in stream.getvalue()
    assert "Bar phase: done" not in stream.getvalue()


def test_a_study_run_logged_to_a_file_has_a_line_for_every_phase(sqlite_url, write_config, processes, tmp_path):
    path = write_config(trials=2, sampler={"name": "greedy"}, sparsity={"split": "greedy"})
    processes.run("study", "create", str(path), "--storage", sqlite_url)
    output = processes.run("study", "run", "tiny", "--storage", sqlite_url, env={"SPARSEALLOC_PROGRESS_SECONDS": "0.2"})
    for phase in ("Calibrating", "Greedy split tables", "Dense reference (search)", "Trials"):
        assert f"{phase}: started" in output, output
    for phase in ("Calibrating", "Greedy split tables", "Dense reference (search)"):
        assert re.search(rf"{re.escape(phase)}: done, \d+/\d+ in ", output), output
    export = processes.run("study", "export", "tiny", "--storage", sqlite_url, "--out", str(tmp_path / "lookup"))
    assert re.search(r"Export: done, \d+/\d+ in ", export), export
