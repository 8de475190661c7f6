"""One study, the whole frontier: a frontier ``bo`` study against one single-target ``bo`` study per target.

On SmolLM2-135M, with the data roles and search protocol of ``bench/allocators.py`` (its ``study_config``:
pydoc calibration/search/validation/held-out documents never shared, parlspeech as the out-of-domain
held-out corpus, KL objective, screen of 4 sequences, promotion of the best third to 8 fresh ones):

* ``single``: a ``bo`` study (greedy site split, the best variant of the allocator benchmark) at each of
  0.4 / 0.5 / 0.6 / 0.7 with the budget ``B`` forward tokens each (default 51,200, today's);
* ``frontier``: one ``bo`` study over the four targets with ``2B`` forward tokens: the budget of **two**
  single-target studies for four targets;
* ``greedy`` (TEAL's greedy-uniform) and ``uniform``, one evaluation each, at the four targets and at the
  interpolated targets 0.45 / 0.55 / 0.65.

Each study's allocation at each target is chosen as an export chooses it (among that target's trials that
reached the highest rung, by validation KL). Between two frontier targets the frontier's allocation is the
convex combination of its neighbours' (what ``load_lookup(..., sparsity=)`` loads), which meets the
interpolated target exactly. Everything is reported on both held-out corpora at exactly its target
sparsity (the quantile rule; the measured sparsity is in the JSON), as held-out perplexity degradation
against the dense model.

Run: ``python bench/frontier.py --seeds 0 1 2`` (hours on 2 CPU cores; a rerun with the same ``--db`` reuses
finished studies). Writes ``frontier.{json,md}`` into ``--out`` after every study.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/frontier.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import optuna
import torch

from allocator.search.samplers import TargetView
from bench._common import RESULTS, RUNS, MergeRule, merge_parts, write_results
from bench._protocol import BASE_BUDGET, CORPORA, dense_figures, figures, run_one, study_config
from storage import Database
from studies import (
    create_study,
    evaluate_candidate,
    export_candidates,
    load_optuna_study,
    open_session,
    run_study,
    tokens_spent,
)

TARGETS = (0.4, 0.5, 0.6, 0.7)
BETWEEN = (0.45, 0.55, 0.65)
#: The three kinds of entries of a frontier results file, each a dict by key.
SECTIONS = ("baselines", "single", "frontier")


def frontier_run(database: Database, args: argparse.Namespace, seed: int, dense: dict) -> dict[str, Any]:
    """Run (or reuse) the frontier study of ``seed``; its chosen allocation and held-out figures per target,
    and the interpolated allocations between them."""
    name = f"frontier-bo-greedy-s{seed}" + ("" if args.budget == BASE_BUDGET else f"-b{args.budget}")
    config = study_config("bo-greedy", list(TARGETS), seed, 2 * args.budget, args, name=name)
    create_study(database, config)
    session = open_session(database, config)
    run_study(session)
    study = load_optuna_study(session)
    run: dict[str, Any] = {"name": config.name, "tokens": tokens_spent(study), "points": {}, "between": {}}
    vectors: dict[float, torch.Tensor] = {}
    for target in TARGETS:
        view = TargetView(study, target, TARGETS)
        candidates = [evaluate_candidate(session, t) for t in export_candidates(view, 3)]  # type: ignore[arg-type]
        best = min(candidates, key=lambda c: (c.validation.kl, c.trial.number))
        vectors[target] = best.vector
        point = {"trials": len(view.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))}
        point["chosen_trial"] = best.trial.number
        for role in CORPORA:
            point[role] = figures(session.evaluate(best.vector, role, rule="quantile"), dense[role])
        run["points"][f"{target:g}"] = point
    for target in BETWEEN:
        low = max(t for t in TARGETS if t < target)
        high = min(t for t in TARGETS if t > target)
        weight = (target - low) / (high - low)
        vector = (1 - weight) * vectors[low] + weight * vectors[high]
        point = {"model_sparsity": session.space_for(low).model_sparsity(vector.numpy())}
        for role in CORPORA:
            point[role] = figures(session.evaluate(vector, role, rule="quantile"), dense[role])
        run["between"][f"{target:g}"] = point
    return run


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=BASE_BUDGET, help="B: forward tokens of one single-target study.")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file to use (kept; resumable).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("frontier", "baselines", "single"),
        default=["frontier", "baselines", "single"],
        help="What this invocation runs (several invocations may share one --db; join them with --merge).",
    )
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="Join these frontier.json files.")
    return parser


def main() -> None:
    """Run the parts the options select (or join results files with ``--merge``); write frontier.{json,md}."""
    args = build_parser().parse_args()
    if args.merge:
        write_outputs(merge_results(args.merge), args.out)
        print((args.out / "frontier.md").read_text())
        return
    # The protocol of bench/allocators.py as frontier.md was measured: 16 held-out sequences (its default is 64).
    args.seq_len, args.calibration_sequences, args.search_sequences = 256, 64, 256
    args.validation_sequences, args.heldout_sequences = 16, 16
    args.greedy_sequences, args.screen, args.promote = 4, 4, [8]
    command = shlex.join(["python", "bench/frontier.py", *sys.argv[1:]])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    RUNS.mkdir(parents=True, exist_ok=True)
    db_path = args.db or RUNS / f"frontier-{datetime.now().strftime('%Y%m%d-%H%M%S')}.db"
    database = Database(f"sqlite:///{db_path}")
    print(f"database {db_path}", flush=True)
    started = time.perf_counter()
    dense = dense_figures(database, args)
    results: dict[str, Any] = {"command": command, "db": str(db_path), "budget": args.budget, "dense": dense}
    results.update(baselines={}, single={}, frontier={})
    for _ in _studies(database, args, dense, results):
        results["seconds"] = time.perf_counter() - started
        write_outputs(results, args.out)
    results["seconds"] = time.perf_counter() - started
    write_outputs(results, args.out)
    print((args.out / "frontier.md").read_text())


def _studies(database: Database, args: argparse.Namespace, dense: dict, results: dict[str, Any]) -> Iterator[None]:
    """Run the selected parts seed by seed into ``results``, yielding whenever there is something new to save."""
    for seed in args.seeds:
        if "frontier" in args.parts:
            run = frontier_run(database, args, seed, dense)
            results["frontier"][str(seed)] = run
            print(f"{run['name']:<22} tokens {run['tokens']:,}", flush=True)
            yield
        if "baselines" in args.parts and not results["baselines"]:
            yield from _baselines(database, args, dense, results)
        if "single" not in args.parts:
            continue
        for target in TARGETS:
            run = run_one(database, study_config("bo-greedy", target, seed, args.budget, args), dense, False)
            results["single"][f"{target:g}/{seed}"] = run
            print(
                f"{run['name']:<22} tokens {run['tokens']:,} held-out {run['heldout']['degradation']:+.1%}", flush=True
            )
            yield


def _baselines(database: Database, args: argparse.Namespace, dense: dict, results: dict[str, Any]) -> Iterator[None]:
    """Greedy-uniform and uniform at every target and in between, one evaluation each; yields once per kind."""
    for sampler in ("greedy", "uniform"):
        for target in (*TARGETS, *BETWEEN):
            run = run_one(database, study_config(sampler, target, 0, args.budget, args), dense, False)
            results["baselines"][f"{sampler}@{target:g}"] = run
            print(f"{run['name']:<22} held-out {run['heldout']['degradation']:+.1%}", flush=True)
        yield


def _check_benchmark(path: Path, part: dict[str, Any], first: dict[str, Any]) -> None:
    """Refuse a part of another budget or with other dense figures: not the same benchmark."""
    if part["budget"] != first["budget"] or part["dense"] != first["dense"]:
        raise SystemExit(f"{path}: another budget or other dense figures; not the same benchmark.")


def _entries(part: dict[str, Any]) -> Iterator[tuple[tuple[str, str], Any]]:
    """A part's entries keyed by (section, key): its baselines, single-target runs and frontier runs."""
    for section in SECTIONS:
        for key, entry in part[section].items():
            yield (section, key), entry


#: The invocations of one frontier benchmark share one database and ran side by side on one machine: one
#: database only (its report compares entries without naming their database), and the longest part's seconds
#: are the wall time (bench/allocators.py sums its parts', run one after another or on other machines).
MERGE_RULE = MergeRule(
    check=_check_benchmark,
    databases=lambda part: {part["db"]: {"dense": part["dense"]}},
    entries=_entries,
    several_databases=False,
    seconds=max,
)


def merge_results(paths: list[Path]) -> dict[str, Any]:
    """One result from invocations that ran different parts on one database (same budget and dense figures).

    The rule (:data:`MERGE_RULE`): a part of another database is refused, a later part's entry replaces an
    earlier one's, and the merged seconds are the longest part's (the invocations ran side by side).
    """
    merged = merge_parts(paths, MERGE_RULE)
    parts = merged.parts
    result = {**parts[0], **{section: {} for section in SECTIONS}, "merged_from": merged.merged_from}
    result["command"] = " ; ".join(part["command"] for part in parts)
    for (section, key), entry in merged.entries.items():
        result[section][key] = entry
    result["seconds"] = merged.seconds
    return result


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}"


def table(results: dict[str, Any], role: str) -> list[str]:
    """Held-out degradation on ``role`` per target: baselines, single-target bo and the frontier, per seed."""
    seeds = sorted({*results["frontier"], *(key.split("/")[1] for key in results["single"])}, key=int)
    lines = [
        "| target | uniform | greedy-uniform | single bo (per seed) | frontier (per seed) | median single | "
        "median frontier | frontier ≤ single | frontier < greedy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in sorted((*TARGETS, *BETWEEN)):
        key = f"{target:g}"
        base = results["baselines"]
        uniform = base.get(f"uniform@{key}", {}).get(role, {}).get("degradation")
        greedy = base.get(f"greedy@{key}", {}).get(role, {}).get("degradation")
        single = [
            results["single"][f"{key}/{s}"][role]["degradation"] for s in seeds if f"{key}/{s}" in results["single"]
        ]
        part = "points" if target in TARGETS else "between"
        front = [results["frontier"][s][part][key][role]["degradation"] for s in seeds if s in results["frontier"]]
        ms, mf = _median(single), _median(front)
        lines.append(
            f"| {key} | {_pct(uniform)} | {_pct(greedy)} | {', '.join(_pct(v) for v in single) or '—'} | "
            f"{', '.join(_pct(v) for v in front)} | {_pct(ms)} | {_pct(mf)} | "
            f"{'—' if ms is None or mf is None else ('yes' if mf <= ms else 'no')} | "
            f"{'—' if greedy is None or mf is None else ('yes' if mf < greedy else 'no')} |"
        )
    return lines


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Write ``frontier.json`` (``results``) and its report ``frontier.md`` into ``out``."""
    dense = results["dense"]
    lines = [
        "# One study, the whole frontier (SmolLM2-135M)",
        "",
        f"Commands: `{results['command']}`. Budget: a single-target study {results['budget']:,} forward tokens; "
        f"a frontier study over {', '.join(f'{t:g}' for t in TARGETS)} twice that. Held-out perplexity "
        f"degradation against the dense model (held-out {dense['heldout']['perplexity']:.3f}, out-of-domain "
        f"{dense['ood']['perplexity']:.3f}), every allocation at exactly its target sparsity. Between frontier "
        "targets the frontier's allocation is the convex combination of its neighbours'. "
        f"{results.get('seconds', 0) / 60:.0f} min of wall time.",
        "",
    ]
    for role, title in (
        ("heldout", "Held-out (pydoc documents no other role used)"),
        ("ood", "Out-of-domain (parlspeech)"),
    ):
        lines += [f"## {title}", "", *table(results, role), ""]
    tokens = {seed: run["tokens"] for seed, run in results["frontier"].items()}
    lines.append(f"Frontier tokens used per seed: {tokens}.")
    markdown = "\n".join(lines) + "\n"
    write_results(out, "frontier", results, markdown, indent=1, json_newline=False, default=float, echo=False)


if __name__ == "__main__":
    main()
