"""Fault soak: 3 workers on PostgreSQL and 2 on SQLite, 20 kills each: half of them a random worker SIGKILLed
and replaced, half a process killed between creating its trial and its first heartbeat (the window kill).

Checks at the end of each: no worker still running at the deadline (no hang), exactly the requested
finished trials, none lost, no proposal evaluated twice,
every finished trial on the constraint, the stored calibration intact. A short version runs in the test
suite (tests/studies/test_soak.py).

Run: ``python bench/soak.py`` (needs PostgreSQL on 127.0.0.1:5432, database ``test``; ``--quick`` for a
smoke run). Writes bench/results/soak.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/soak.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import psycopg

from allocator.testing.tiny import build_tiny_model_dir
from bench._common import RESULTS, results_name, write_results
from studies.testing.soak import run_soak


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--sampler", default="bo")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    """Soak both backends; write soak{,_quick}.{json,md}; exit 1 unless every check held."""
    args = build_parser().parse_args()
    if args.quick:
        args.kills, args.trials = 3, 12
    results = _soak(args)
    markdown = _markdown(results, args)
    write_results(args.out, results_name("soak", args.quick), [r.as_dict() for r in results], markdown)
    if not all(r.ok for r in results):
        raise SystemExit(1)


def _soak(args: argparse.Namespace) -> list[Any]:
    """One soak on a fresh PostgreSQL database (dropped after) and one on SQLite, on a tiny model."""
    results = []
    with tempfile.TemporaryDirectory(prefix="sparsealloc-soak-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model_dir(root / "model")
        database = f"sparsealloc_soak_{uuid.uuid4().hex[:8]}"
        admin = "host=127.0.0.1 port=5432 dbname=test user=root"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        try:
            for backend, workers, url in (
                ("postgresql", 3, f"postgresql+psycopg://root@127.0.0.1:5432/{database}"),
                ("sqlite", 2, f"sqlite:///{root / 'soak.db'}"),
            ):
                results.append(
                    run_soak(
                        url=url,
                        backend=backend,
                        model_dir=model_dir,
                        workdir=root / backend,
                        workers=workers,
                        kills=args.kills,
                        trials=args.trials,
                        sampler=args.sampler,
                    )
                )
        finally:
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return results


def _markdown(results: list[Any], args: argparse.Namespace) -> str:
    """The report: one row per backend, and what each column counts."""
    lines = [
        "# Fault soak",
        "",
        f"`python bench/soak.py`: a tiny Llama study (`{args.sampler}` sampler, cheap objective); kills spread over "
        "the first half of its trials, each 1-6 s after its turn comes (sooner if the study moves on): "
        "alternately a random worker SIGKILLed at a random moment and replaced, and a process that creates its "
        "trial (`study.ask()`) and is SIGKILLed before its first heartbeat (a kill inside the window between "
        "trial creation and first heartbeat); then the workers finish the study.",
        "",
        "| backend | workers | kills survived | of them in the window | hangs | trials requested | finished | lost "
        "| duplicates | off constraint | failed (killed) | retried | calibration intact | seconds | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r.backend} | {r.workers} | {r.kills} | {r.window_kills} | {r.hangs} | {r.trials_requested} "
            f"| {r.trials_finished} | {r.finished_lost} | {r.duplicates} | {r.off_constraint} | {r.failed_trials} "
            f"| {r.retried_trials} "
            f"| {'yes' if r.calibration_intact and r.calibrations == 1 else 'NO'} | {r.seconds:.0f} "
            f"| {'yes' if r.ok else 'NO'} |"
            for r in results
        ],
        "",
        "`failed (killed)`: trials left RUNNING by a kill and failed once their heartbeat went stale (a kill "
        "that lands while a worker starts up fails no trial); `hangs`: workers still running at the deadline; "
        "`retried`: finished trials that re-ran "
        "a failed trial's vector (a re-run killed again counts twice in `failed`). `lost`: finished trials "
        "missing at the end; `duplicates`: vectors evaluated to completion twice.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
