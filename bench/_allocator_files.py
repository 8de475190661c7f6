"""Reading the allocator benchmark's results files (``allocators.json``), of one invocation or merged.

One invocation runs in one database (``settings["db"]``, its dense figures at the top); a merge of several
keeps them apart (``databases``), because hosts round the same tokens differently and only figures of one
database compare. Used by bench/allocators.py (its report and merge) and bench/heldout_noise.py.
"""

from __future__ import annotations

from typing import Any


def with_role_counts(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``validation_sequences`` and ``heldout_sequences``: files written before the two had
    their own options hold one ``eval_sequences`` for both."""
    if "eval_sequences" not in settings:
        return settings
    count = settings["eval_sequences"]
    return {**settings, "validation_sequences": count, "heldout_sequences": count}


def databases_of(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each database a results file measured in, with its dense figures and environment.

    One invocation runs in one database (``settings["db"]``); a merge of several keeps them apart
    (``databases``), because hosts round the same tokens differently and only figures of one database compare.
    """
    if "databases" in results:
        return results["databases"]
    dbs = results["settings"]["db"]
    if len(dbs) != 1:
        raise SystemExit(f"a results file of {len(dbs)} databases without their dense figures: {dbs}")
    return {dbs[0]: {"dense": results["dense"], "environment": results.get("environment")}}


def run_database(results: dict[str, Any], run: dict[str, Any]) -> str:
    """The database ``run`` was measured in (files of one invocation do not name it on each run)."""
    return run.get("db") or next(iter(databases_of(results)))
