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
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/allocators.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import numpy as np
import optuna

from bench._allocator_files import databases_of, run_database, with_role_counts
from bench._common import RESULTS, RUNS, MergeRule, environment, merge_parts, write_results
from bench._protocol import (
    BASE_BUDGET,
    CORPORA,
    SAMPLERS,
    SINGLE,
    dense_figures,
    run_one,
    spent_budget,
    study_config,
    study_name,
)
from storage import Database
from studies import tokens_spent

BO_VARIANTS = ("bo", "bo-greedy", "bo-blend", "bo-search")
REDUCTION_GOAL = 0.20  # issue 26: below the best allocation that needs no search
#: The settings every part of a merge must share (the data and the search protocol).
COMPARABLE = (
    "seq_len",
    "calibration_sequences",
    "search_sequences",
    "validation_sequences",
    "heldout_sequences",
    "screen",
    "promote",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max over ``runs`` (an allocator's seeds) of every reported figure on both corpora."""
    out: dict[str, Any] = {"seeds": len(runs), "tokens": [r["tokens"] for r in runs]}
    for role in CORPORA:
        for key in ("degradation", "kl", "perplexity", "measured_sparsity"):
            values = [r[role][key] for r in runs]
            out[f"{role}_{key}"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
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
    return parser


def _quick(args: argparse.Namespace) -> None:
    """A smoke run's settings: three allocators, one target and seed, a few short sequences per role."""
    args.targets, args.samplers, args.seeds, args.budgets = [0.5], ["uniform", "greedy", "bo"], [0], [4096]
    args.calibration_sequences, args.search_sequences, args.seq_len = 4, 16, 128
    args.validation_sequences, args.heldout_sequences = 2, 2
    args.greedy_sequences, args.screen, args.promote = 1, 2, [2]


def main() -> None:
    """Run the grid the options select (or join results files with ``--merge``); write allocators.{json,md}."""
    args = build_parser().parse_args()
    command = shlex.join(["python", "bench/allocators.py", *sys.argv[1:]])
    if args.merge:
        write_outputs(merge_results(args.merge, command), args.out)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.quick:
        _quick(args)
    RUNS.mkdir(parents=True, exist_ok=True)
    db_path = args.db or RUNS / f"allocators-{datetime.now().strftime('%Y%m%d-%H%M%S')}.db"
    database = Database(f"sqlite:///{db_path}")
    print(f"database {db_path}", flush=True)
    started = time.perf_counter()
    dense = dense_figures(database, args)
    suffix = "_quick" if args.quick else ""
    runs: list[dict[str, Any]] = []
    for cell in _cells(args):
        run = _run_cell(database, args, dense, *cell)
        if run is not None:
            runs.append(run)
            write_outputs(_results(command, args, db_path, dense, runs, started), args.out, suffix, echo=False)
    write_outputs(_results(command, args, db_path, dense, runs, started), args.out, suffix)


def _cells(args: argparse.Namespace) -> Iterator[tuple[str, float, int, int]]:
    """(sampler, target, seed, budget) of every study the options select, in the order they run."""
    for budget in args.budgets:
        for target in args.targets:
            for sampler in args.samplers:
                for seed in [0] if sampler in SINGLE else args.seeds:
                    yield sampler, target, seed, budget


def _run_cell(
    database: Database, args: argparse.Namespace, dense: dict, sampler: str, target: float, seed: int, budget: int
) -> dict[str, Any] | None:
    """Run (or reuse) one study and measure it; None for an unfinished search with ``--finished-only``."""
    name = study_name(sampler, target, seed, budget)
    if args.finished_only and sampler not in SINGLE and not finished(database, name, budget):
        print(f"{name:<22} not finished in this database; skipped", flush=True)
        return None
    run = run_one(database, study_config(sampler, target, seed, budget, args), dense, args.thresholds)
    print(
        f"{run['name']:<22} tokens {run['tokens']:>7,} trials {run['trials']:>3}  held-out "
        f"{run['heldout']['perplexity']:.3f} ({run['heldout']['degradation']:+.1%}) ood "
        f"{run['ood']['perplexity']:.3f} ({run['ood']['degradation']:+.1%})",
        flush=True,
    )
    return {**run, "sampler": sampler, "target": target, "seed": seed, "budget": spent_budget(sampler, budget)}


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


def _check_settings(path: Path, part: dict[str, Any], first: dict[str, Any]) -> None:
    """Refuse a part whose data or search settings differ from the first part's."""
    ours, theirs = with_role_counts(part["settings"]), with_role_counts(first["settings"])
    for key in COMPARABLE:
        if ours[key] != theirs[key]:
            raise SystemExit(f"{path}: {key} is {ours[key]}, not {theirs[key]}.")


def _runs_by_key(part: dict[str, Any]) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    """A part's runs, each naming its database, keyed by (database, study name)."""
    for run in part["runs"]:
        run = {**run, "db": run_database(part, run), "budget": spent_budget(run["sampler"], run["budget"])}
        yield (run["db"], run["name"]), run  # names carry the budget's scale (study_name)


def _disagreement(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The refusal of two files holding one study of one database with other figures."""
    if abs(old["heldout"]["perplexity"] - new["heldout"]["perplexity"]) > 1e-6:
        return f"{new['name']} in {new['db']}: two files disagree."
    return None


MERGE_RULE = MergeRule(
    check=_check_settings,
    databases=databases_of,
    entries=_runs_by_key,
    several_databases=True,
    seconds=sum,
    disagreement=_disagreement,
)


def merge_results(paths: list[Path], command: str) -> dict[str, Any]:
    """One result from several invocations' files: runs joined by (database, study name).

    Settings must agree everywhere. Parts may come from several databases (each lost with its machine, the
    grid was finished on others): each run keeps its database, the parts of one database must agree on its dense
    figures, and every comparison the report makes (reductions, anchors) stays within one database. The
    parts' seconds are summed (:data:`MERGE_RULE`): they are the time the grid took, its invocations run one
    after another or on other machines (bench/frontier.py's ran side by side on one: it takes the longest).
    """
    merged = merge_parts(paths, MERGE_RULE)
    first = merged.parts[0]
    return {
        "command": command,
        "settings": {**first["settings"], "db": sorted(merged.databases)},
        "databases": merged.databases,
        "runs": list(merged.entries.values()),
        "seconds": merged.seconds,
        "merged_from": merged.merged_from,
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


def no_search_baselines(results: dict[str, Any], run: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    """Every allocation needing no search that ``run`` compares with on ``role``, by name: the single allocations
    (uniform, greedy-uniform, blend-uniform) of its database at its target, and the best no-search trial of its
    own study (a study that searches the split evaluates them as its start points)."""
    db = run_database(results, run)
    names = {"uniform": "uniform", "greedy": "greedy-uniform", "blend-uniform": "blend-uniform"}
    found = {
        names[r["sampler"]]: r[role]
        for r in results["runs"]
        if r["sampler"] in SINGLE and run_database(results, r) == db and r["target"] == run["target"]
    }
    own = run.get("best_no_search")
    if own is not None and role in own and own["name"] not in found:
        found[own["name"]] = own[role]
    return found


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 26's goal, per bo variant, budget, target, seed and held-out corpus: against the best allocation of its
    own database that needs no search (:func:`no_search_baselines`), and against ``was`` and ``evopress``."""
    databases = databases_of(results)
    by = {(run_database(results, r), r["sampler"], r["target"], r["seed"], r["budget"]): r for r in results["runs"]}
    rows = []
    for r in results["runs"]:
        db = run_database(results, r)
        if r["sampler"] not in BO_VARIANTS:
            continue
        for role in CORPORA:
            baselines = no_search_baselines(results, r, role)
            if not baselines:
                continue
            name, best = min(baselines.items(), key=lambda item: item[1]["degradation"])
            anchors = [by.get((db, a, r["target"], r["seed"], r["budget"])) for a in ("was", "evopress")]
            anchor = min((a[role]["degradation"] for a in anchors if a), default=None)
            reduction = 1.0 - r[role]["degradation"] / best["degradation"]
            interval = reduction_interval(
                r[role].get("sequence_nll", []),
                best.get("sequence_nll", []),
                databases[db]["dense"][role].get("sequence_nll", []),
            )
            greedy = baselines.get("greedy-uniform")
            rows.append(
                {
                    "variant": r["sampler"],
                    "database": db,
                    "budget": r["budget"],
                    "target": r["target"],
                    "seed": r["seed"],
                    "corpus": role,
                    "no_search_name": name,
                    # without blend-uniform in the database the yardstick is the best of what it holds: weaker
                    "yardstick_complete": "blend-uniform" in baselines,
                    "no_search": best["degradation"],
                    "greedy": None if greedy is None else greedy["degradation"],
                    "anchor": anchor,
                    "bo": r[role]["degradation"],
                    "measured": r[role]["measured_sparsity"],
                    "reduction": reduction,
                    "interval": interval,
                    "goal_no_search": reduction >= REDUCTION_GOAL,
                    "goal_anchor": None if anchor is None else r[role]["degradation"] < anchor,
                }
            )
    return sorted(rows, key=lambda g: (SAMPLERS.index(g["variant"]), g["budget"], -g["target"], g["seed"]))


def write_outputs(results: dict[str, Any], out: Path, suffix: str = "", *, echo: bool = True) -> None:
    """Write ``allocators{suffix}.json`` (``results``) and its report ``allocators{suffix}.md`` into ``out``."""
    lines = [
        *_header_lines(results),
        *_database_lines(results),
        *_sampler_tables(results),
        *_goal_table(results),
        *_promotion_lines(results),
        *_overhead_lines(results),
    ]
    write_results(out, f"allocators{suffix}", results, "\n".join(lines), echo=echo)


def _header_lines(results: dict[str, Any]) -> list[str]:
    """The report's title and the protocol its figures were measured with."""
    s = with_role_counts(results["settings"])
    return [
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


def _database_lines(results: dict[str, Any]) -> list[str]:
    """Each database's dense figures and environment (and why several are kept apart, where there are)."""
    lines = []
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
    return lines


def _sampler_tables(results: dict[str, Any]) -> list[str]:
    """One table per (budget, target): each allocator's figures per database, over its seeds."""
    groups: dict[tuple[int, float], dict[tuple[str, str], list[dict[str, Any]]]] = {}
    for r in results["runs"]:
        budget = BASE_BUDGET if r["sampler"] in SINGLE else r["budget"]
        groups.setdefault((budget, r["target"]), {}).setdefault((r["sampler"], run_database(results, r)), []).append(r)
    lines = []
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
            lines.append(_sampler_row(sampler, db, runs))
        lines.append("")
    return lines


def _sampler_row(sampler: str, db: str, runs: list[dict[str, Any]]) -> str:
    """One allocator's row: median and range over its seeds, on both held-out corpora."""
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
    return f"| {sampler} | `{_label(db)}` | {seeds} | {max(m['tokens']):,} | " + " | ".join(cells) + " |"


def _goal_table(results: dict[str, Any]) -> list[str]:
    """Issue 26's goal, seed by seed (:func:`goal_rows`)."""
    rows = goal_rows(results)
    return [
        "## Issue 26's goal, seed by seed",
        "",
        "Held-out perplexity degradation vs dense, at exactly the target sparsity. The goal: `bo` at least "
        f"{REDUCTION_GOAL:.0%} below the best allocation of its database that needs no search (named; the best "
        "of uniform, greedy-uniform, blend-uniform and the study's own start points on that corpus) and below "
        "both `was` and `evopress` (same seed, same budget, same database), on both held-out corpora. The "
        "interval: 90% of a paired bootstrap over the held-out sequences (how much the reduction depends on which "
        "text was drawn). ¹: the database holds no blend-uniform run, so its yardstick is the best of uniform "
        "and greedy-uniform, a weaker one (blend-uniform is the best no-search allocation wherever it ran).",
        "",
        "| variant | database | budget | target | seed | corpus | best no-search | its degradation | greedy-uniform "
        "| best of was/evopress | bo | measured | reduction vs best no-search | 90% interval "
        f"| ≥ {REDUCTION_GOAL:.0%} | beats both |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {g['variant']} | `{_label(g['database'])}` | {g['budget']:,} | {g['target']:.0%} | {g['seed']} | "
            f"{g['corpus']} | {g['no_search_name']}{'' if g.get('yardstick_complete', True) else ' ¹'} | "
            f"{_pct(g['no_search'])} | {_pct(g['greedy'])} | "
            f"{_pct(g['anchor'])} | {_pct(g['bo'])} | {g['measured']:.4f} | "
            f"{g['reduction']:.1%} | {_interval(g.get('interval'))} | {'yes' if g['goal_no_search'] else '**no**'} | "
            f"{'—' if g['goal_anchor'] is None else 'yes' if g['goal_anchor'] else '**no**'} |"
            for g in rows
        ],
        "",
    ]


OVERHEAD_GOAL = 0.10  # issue 25: a bo study's time outside the forward passes of its trials


def _overhead_lines(results: dict[str, Any]) -> list[str]:
    """Each search study's overhead: the share of its wall time (first trial's start to last trial's end) that is
    not the forward passes of its screens and promotions (proposals, database, bookkeeping)."""
    runs = [r for r in results["runs"] if r.get("forward_seconds") and r.get("wall_seconds")]
    if not runs:
        return []
    lines = [
        "## Study overhead",
        "",
        "Wall time outside the trials' forward passes (proposals, database, bookkeeping), as a share of the "
        f"study's wall time; the goal for `bo` variants (issue 25): at most {OVERHEAD_GOAL:.0%}. Measured on the "
        "machine and load of the run (the forward passes and the proposals share its cores).",
        "",
        "| study | wall s | forward s | overhead | goal |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        overhead = 1.0 - r["forward_seconds"] / r["wall_seconds"]
        goal = "—" if r["sampler"] not in BO_VARIANTS else "yes" if overhead <= OVERHEAD_GOAL else "**no**"
        lines.append(
            f"| {r['name']} | {r['wall_seconds']:.0f} | {r['forward_seconds']:.0f} | {overhead:.1%} | {goal} |"
        )
    return [*lines, ""]


def _promotion_lines(results: dict[str, Any]) -> list[str]:
    """How well screens rank fresh sequences, over every promoted trial of every study (three at least)."""
    promoted = [pair for r in results["runs"] for pair in r.get("promoted", []) if len(pair) == 2]
    if len(promoted) < 3:
        return []
    from scipy.stats import spearmanr

    rho = spearmanr([p[0] for p in promoted], [p[1] for p in promoted]).statistic
    return [
        f"Screens against fresh sequences: over the {len(promoted)} promoted trials of every study, the screen's "
        f"KL ranks the KL on the promotion's fresh sequences with Spearman ρ = {rho:.3f}.",
        "",
    ]


if __name__ == "__main__":
    main()
