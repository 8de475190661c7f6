"""How long ``make demo`` takes a new user after the install, phase by phase, and whether its log is ever silent.

Runs ``sparsealloc demo`` into a fresh directory with stderr piped (a log, not a terminal) and reads the
progress lines it writes there (``X: done, n/n in h:mm:ss``); ``--fresh-cache`` empties the model cache
(``$SPARSEALLOC_CACHE``), so the embedded model's one-time GGUF conversion counts too. Reports the wall time
against the goal (5 minutes on 2 idle cores, issue 25), each phase's time, and the longest gap between two
lines of the log (goal: no 30-second silence).

Run: ``python bench/demo_time.py`` (minutes). Writes ``demo_time.{json,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/demo_time.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

from bench._common import RESULTS, environment, write_results

GOAL_SECONDS = 300.0
GOAL_SILENCE_SECONDS = 30.0
_DONE = re.compile(r"^(?P<phase>.+): done, \d+/\d+ in (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)$")


def run_demo(out: Path, cache: Path | None) -> tuple[float, list[tuple[float, str]]]:
    """Run the demo (with the model cache ``cache``; None: the user's); its wall seconds and every line it wrote,
    with the second it arrived."""
    command = [str(Path(sys.executable).with_name("sparsealloc")), "demo", "--out", str(out)]
    env = {**os.environ, **({"SPARSEALLOC_CACHE": str(cache)} if cache is not None else {})}
    started = time.perf_counter()
    lines: list[tuple[float, str]] = []
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reader = threading.Thread(target=_read, args=(process, started, lines))
        reader.start()
        process.wait()
        reader.join()
    finally:
        process.kill()
    if process.returncode != 0:
        raise SystemExit(f"sparsealloc demo failed ({process.returncode}):\n" + "\n".join(t for _, t in lines[-20:]))
    return time.perf_counter() - started, lines


def _read(process: subprocess.Popen, started: float, lines: list[tuple[float, str]]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append((time.perf_counter() - started, line.rstrip("\n")))


def phases(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds of every finished phase by name (a phase run several times, such as each trial's evaluation, summed)."""
    found: dict[str, float] = {}
    for _, text in lines:
        match = _DONE.match(text.strip())
        if match:
            seconds = 3600 * int(match["h"]) + 60 * int(match["m"]) + int(match["s"])
            name = re.sub(r"^trial \d+$", "trial evaluations", match["phase"])
            found[name] = found.get(name, 0.0) + seconds
    return found


def longest_silence(lines: list[tuple[float, str]], wall: float) -> float:
    """The longest time between two lines of the log (from the start, to the end)."""
    times = [0.0, *(t for t, _ in lines), wall]
    return max(b - a for a, b in itertools.pairwise(times))


def main() -> None:
    """Run the demo once and write the figures with their goals."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--fresh-cache", action="store_true", help="Convert the embedded model again (a first run after the install)."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="demo-time-") as scratch:
        cache = Path(scratch) / "cache" if args.fresh_cache else None
        wall, lines = run_demo(Path(scratch) / "demo-out", cache)
    silence = longest_silence(lines, wall)
    results: dict[str, Any] = {
        "environment": environment(),
        "fresh_cache": args.fresh_cache,
        "wall_seconds": wall,
        "longest_silence_seconds": silence,
        "phases": phases(lines),
        "summary": [text for _, text in lines if text.startswith(("sparsealloc demo", "               ", "held-out"))],
    }
    cache = "empty" if args.fresh_cache else "converted"
    rows = [
        f"| `make demo` wall time ({cache} model cache) | {wall / 60:.1f} min | ≤ {GOAL_SECONDS / 60:.0f} min | "
        f"{'yes' if wall <= GOAL_SECONDS else '**no**'} |",
        f"| longest silence in the log | {silence:.0f} s | < {GOAL_SILENCE_SECONDS:.0f} s | "
        f"{'yes' if silence < GOAL_SILENCE_SECONDS else '**no**'} |",
    ]
    lines_md = [
        "# `make demo`, timed",
        "",
        "`python bench/demo_time.py`: the demo with stderr piped, as a log. Ratios drift less than times; this "
        "is one run, on the machine and load the environment line names.",
        "",
        "| figure | measured | goal | met |",
        "|---|---|---|---|",
        *rows,
        "",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.0f} |" for name, seconds in results["phases"].items()],
        "",
        "What the demo printed:",
        "",
        "```",
        *results["summary"],
        "```",
    ]
    write_results(args.out, "demo_time", results, "\n".join(lines_md) + "\n")


if __name__ == "__main__":
    main()
