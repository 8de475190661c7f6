"""Head-to-head: every allocator on SmolLM2-135M and the pydoc corpus, equal budget, held-out perplexity.

One study per (sampler, target, seed) through the real study runner and storage (one SQLite file per
benchmark run, kept under bench/runs/), all with the same calibration tokens, held-out tokens and budget:
``uniform`` and ``greedy`` (one evaluation each; greedy-uniform is TEAL's method), and ``random``, ``tpe``,
``cmaes``, ``was``, ``evopress``, ``bo`` and ``bo`` with the greedy split at ``--trials`` evaluations
(default 50, WAS's budget), over ``--seeds`` seeds where the sampler has randomness.

Reported per sampler and target: the best trial's calibration perplexity, its held-out perplexity, the
relative held-out degradation against dense, the evaluation at which the sampler first beat greedy on
calibration perplexity, wall time and the sampler's share of it; medians and ranges over seeds; and a PNG
of best-so-far curves with held-out checks at evaluations 10, 25 and 50. ``--ranking`` first checks that
the cheap calibration budget ranks allocations as the full one does (Spearman over random allocations).

The tables end with issue 5's goal checked seed by seed: ``bo`` (each variant) against greedy-uniform
(held-out degradation at least 25% smaller) and against the better of ``was`` and ``evopress`` on the same
seed, and whether its 50-evaluation result was already its best after 25.

Run: ``python bench/allocators.py`` (hours on 2 CPU cores; ``--quick`` for a smoke run). Writes
bench/results/allocators.{json,md,png}. A run can be split across invocations (``--targets``, ``--seeds``,
``--samplers``, each with its own ``--out``); ``--merge`` then joins their ``allocators.json`` files by study
name into the tables one invocation would have written, refusing files whose settings, dense perplexity or
shared studies disagree.
"""

from __future__ import annotations

import argparse
import json
import math
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
from optuna.trial import TrialState

from allocator.samplers import evaluated_vector
from storage import Database
from studies import create_study, load_optuna_study, open_session, parse_config, run_study

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parent / "runs"
SAMPLERS = ("uniform", "greedy", "random", "tpe", "cmaes", "was", "evopress", "bo", "bo-greedy")
SINGLE = ("uniform", "greedy")
CHECKPOINTS = (10, 25, 50)
BO_VARIANTS = ("bo", "bo-greedy")
ANCHORS = ("was", "evopress")  # the published searches the goal compares ``bo`` with
REDUCTION_GOAL = 0.25
COMPARABLE = ("trials", "seq_len", "calibration_sequences", "heldout_sequences")  # must agree to merge


def study_name(sampler: str, target: float, seed: int) -> str:
    return f"{sampler}-{round(target * 100)}-s{seed}"


def parse_study_name(name: str) -> tuple[str, int, int]:
    """(sampler, target in percent, seed) of a name written by :func:`study_name`."""
    sampler, percent, seed = name.rsplit("-", 2)
    return sampler, int(percent), int(seed.removeprefix("s"))


def study_config(sampler: str, target: float, seed: int, trials: int, args: argparse.Namespace) -> dict[str, Any]:
    name = study_name(sampler, target, seed)
    greedy_split = sampler in ("greedy", "bo-greedy")
    return {
        "name": name,
        "model": "smollm2-135m",
        "data": {
            "calibration": "pydoc",
            "seq_len": args.seq_len,
            "calibration_sequences": args.calibration_sequences,
            "heldout_sequences": args.heldout_sequences,
            "seed": 0,
        },
        "sparsity": {"target": target, "lower": 0.0, "upper": 0.9, "split": "greedy" if greedy_split else "uniform"},
        "sampler": {"name": "bo" if sampler == "bo-greedy" else sampler},
        "trials": 1 if sampler in SINGLE else trials,
        "seed": seed,
        "evaluation": {"batch_size": 8, "heldout": "none"},
    }


def best_so_far(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[int, float, optuna.trial.FrozenTrial]]:
    """(evaluation count, best calibration perplexity so far, best trial so far) in evaluation order."""
    curve, best = [], None
    for count, trial in enumerate(sorted(trials, key=lambda t: t.datetime_complete), start=1):
        if best is None or trial.value < best.value:
            best = trial
        curve.append((count, float(best.value), best))
    return curve


def run_one(database: Database, config: dict[str, Any], heldout_cache: dict[tuple[Any, ...], float]) -> dict[str, Any]:
    study_config_ = parse_config(config, source=config["name"])
    create_study(database, study_config_)
    session = open_session(database, study_config_)
    run_study(session)  # returns at once for a study already finished in this database (a rerun)
    trials = [t for t in load_optuna_study(session).get_trials() if t.state == TrialState.COMPLETE]
    curve = best_so_far(trials)
    # The search's wall time from the trials' own timestamps, so a rerun on a kept database reports it too.
    wall = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    split = config["sparsity"]["split"]

    def heldout(trial: optuna.trial.FrozenTrial) -> float:
        # The same block vector under another intra-block split is another model: key on both.
        vector = tuple(np.round(evaluated_vector(trial), 12))
        if (split, vector) not in heldout_cache:
            heldout_cache[(split, vector)] = session.objective.heldout(np.asarray(vector)).perplexity
        return heldout_cache[(split, vector)]

    checks = [[k, heldout(curve[k - 1][2])] for k in CHECKPOINTS if k <= len(curve)]
    best = curve[-1][2]
    evaluation_seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
    trial_seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    return {
        "name": config["name"],
        "evaluations": len(trials),
        "curve": [value for _, value, _ in curve],
        "best_calibration": float(best.value),
        "best_heldout": heldout(best),
        "heldout_checks": checks,
        "best_vector": [float(v) for v in evaluated_vector(best)],
        "wall_seconds": wall,
        "sampler_share": max(0.0, 1.0 - evaluation_seconds / trial_seconds) if trial_seconds else 0.0,
    }


def ranking_check(database: Database, args: argparse.Namespace, n: int = 12) -> dict[str, Any]:
    """Spearman correlation of calibration perplexity under the cheap and the full token budgets."""
    from scipy.stats import spearmanr

    cheap = open_session(database, parse_config(study_config("random", 0.5, 0, 1, args), source="ranking"))
    full_args = argparse.Namespace(**{**vars(args), "calibration_sequences": args.full_sequences})
    full_config = {**study_config("random", 0.5, 0, 1, full_args), "name": "ranking-full"}
    full = open_session(database, parse_config(full_config, source="ranking"))
    points = [np.full(cheap.space.dim, 0.5), *cheap.space.sample(n - 1, seed=123)]
    small = [cheap.objective(p).perplexity for p in points]
    large = [full.objective(p).perplexity for p in points]
    rho = float(spearmanr(small, large).statistic)
    return {
        "allocations": n,
        "cheap_tokens": int(cheap.tokens.calibration.numel()),
        "full_tokens": int(full.tokens.calibration.numel()),
        "spearman": rho,
        "cheap": small,
        "full": large,
    }


def degradation(perplexity: float, dense: float) -> float:
    return (perplexity - dense) / dense


def summarise(runs: list[dict[str, Any]], greedy_calibration: float, dense: float) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def first_beat(run: dict[str, Any]) -> int | None:
        return next((i + 1 for i, value in enumerate(run["curve"]) if value < greedy_calibration), None)

    beats = [first_beat(r) for r in runs]
    degradations = [degradation(r["best_heldout"], dense) for r in runs]
    return {
        "seeds": len(runs),
        "best_calibration_median": med("best_calibration"),
        "best_calibration_range": [min(r["best_calibration"] for r in runs), max(r["best_calibration"] for r in runs)],
        "best_heldout_median": med("best_heldout"),
        "best_heldout_range": [min(r["best_heldout"] for r in runs), max(r["best_heldout"] for r in runs)],
        "heldout_degradation_median": statistics.median(degradations),
        "heldout_degradation_range": [min(degradations), max(degradations)],
        "heldout_degradation_per_seed": degradations,
        "first_beat_greedy": beats,
        "wall_seconds_median": med("wall_seconds"),
        "sampler_share_median": med("sampler_share"),
    }


Runs = dict[str, list[dict[str, Any]]]  # a target's runs, by sampler


def target_block(per_sampler: Runs, dense: float, dense_calibration: float) -> dict[str, Any]:
    """One target's results: its runs per sampler and their summaries ("first beat greedy" needs greedy's run)."""
    greedy_calibration = per_sampler["greedy"][0]["best_calibration"] if "greedy" in per_sampler else math.inf
    return {
        "dense_heldout": dense,
        "dense_calibration": dense_calibration,
        "samplers": {name: summarise(runs, greedy_calibration, dense) for name, runs in per_sampler.items()},
        "runs": per_sampler,
    }


def every_run(targets: dict[str, Any]) -> list[dict[str, Any]]:
    return [run for block in targets.values() for runs in block["runs"].values() for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6])
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calibration-sequences", type=int, default=4)
    parser.add_argument("--full-sequences", type=int, default=16, help="The full budget of the ranking check.")
    parser.add_argument("--heldout-sequences", type=int, default=16)
    parser.add_argument("--ranking", action="store_true", help="Also check the cheap budget's ranking.")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file to use (kept; resumable).")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="Run nothing: join these invocations' allocators.json files into --out's tables.",
    )
    args = parser.parse_args()
    command = shlex.join(["python", "bench/allocators.py", *sys.argv[1:]])
    if args.merge:
        write_outputs({**merge_results(args.merge), "command": command}, args.out)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # As the command line does: Optuna's heartbeat and metric-name APIs are stable in use but marked experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.quick:
        args.targets, args.samplers, args.seeds, args.trials = [0.5], ["uniform", "greedy", "random", "bo"], [0], 6
        args.calibration_sequences, args.heldout_sequences, args.seq_len = 2, 2, 128
    RUNS.mkdir(parents=True, exist_ok=True)
    db_path = args.db or RUNS / f"allocators-{datetime.now().strftime('%Y%m%d-%H%M%S')}.db"
    database = Database(f"sqlite:///{db_path}")
    print(f"database {db_path}")
    started = time.perf_counter()

    ranking = ranking_check(database, args) if args.ranking else None
    if ranking:
        print(f"ranking check: Spearman {ranking['spearman']:.3f} over {ranking['allocations']} allocations")
    results: dict[str, Any] = {"command": command, "targets": {}, "ranking": ranking}
    for target in args.targets:
        heldout_cache: dict[tuple[Any, ...], float] = {}
        dense_session = open_session(
            database, parse_config(study_config("uniform", target, 0, 1, args), source="dense")
        )
        dense = dense_session.objective.heldout(0.0).perplexity
        dense_calibration = dense_session.objective(0.0).perplexity
        per_sampler: dict[str, list[dict[str, Any]]] = {}
        for sampler in args.samplers:
            seeds = [0] if sampler in SINGLE else args.seeds
            for seed in seeds:
                run = run_one(database, study_config(sampler, target, seed, args.trials, args), heldout_cache)
                per_sampler.setdefault(sampler, []).append(run)
                print(
                    f"{target:.2f} {sampler:<10} seed {seed}: calibration {run['best_calibration']:.3f}, "
                    f"held-out {run['best_heldout']:.3f} ({run['wall_seconds']:.0f} s)",
                    flush=True,
                )
        results["targets"][str(target)] = target_block(per_sampler, dense, dense_calibration)
    results["settings"] = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "db": str(db_path),
    }
    results["total_seconds"] = time.perf_counter() - started  # this invocation (a rerun reuses finished studies)
    results["search_seconds"] = sum(run["wall_seconds"] for run in every_run(results["targets"]))
    write_outputs(results, args.out, suffix="_quick" if args.quick else "")


def merge_results(paths: list[Path]) -> dict[str, Any]:
    """The results one invocation would have written, from several invocations' ``allocators.json``.

    Runs are joined by study name; a study in two files (greedy, rerun by each invocation) must have the
    same result in both, and the files must share their token budgets and dense perplexities."""
    parts = [(path, json.loads(path.read_text())) for path in paths]
    reference_path, reference = parts[0]
    by_target: dict[float, dict[str, Any]] = {}
    for path, part in parts:
        for key in COMPARABLE:
            if part["settings"][key] != reference["settings"][key]:
                raise SystemExit(
                    f"{path}: {key} is {part['settings'][key]}, {reference_path} has {reference['settings'][key]}; "
                    "not comparable."
                )
        for target, block in part["targets"].items():
            dense = {key: block[key] for key in ("dense_heldout", "dense_calibration")}
            merged = by_target.setdefault(float(target), {**dense, "by_name": {}})
            for key, value in dense.items():
                if not math.isclose(merged[key], value, rel_tol=1e-9):
                    raise SystemExit(f"{path}: {key} at {target} differs from another file's; not comparable.")
            for run in (run for runs in block["runs"].values() for run in runs):
                kept = merged["by_name"].setdefault(run["name"], {**run, "file": str(path)})
                if not math.isclose(kept["best_heldout"], run["best_heldout"], rel_tol=1e-6):
                    raise SystemExit(f"{run['name']}: {kept['file']} and {path} disagree; not comparable.")
    targets: dict[str, Any] = {}
    for target in sorted(by_target):
        block = by_target[target]
        per_sampler: Runs = {}
        for name in sorted(block["by_name"], key=lambda n: (SAMPLERS.index(parse_study_name(n)[0]), n)):
            run = {k: v for k, v in block["by_name"][name].items() if k != "file"}
            per_sampler.setdefault(parse_study_name(name)[0], []).append(run)
        targets[str(target)] = target_block(per_sampler, block["dense_heldout"], block["dense_calibration"])
    runs = every_run(targets)
    settings = {key: reference["settings"][key] for key in COMPARABLE}
    return {
        "targets": targets,
        "ranking": next((part["ranking"] for _, part in parts if part.get("ranking")), None),
        "settings": {
            **settings,
            "targets": sorted(by_target),
            "samplers": [s for s in SAMPLERS if any(s in block["runs"] for block in targets.values())],
            "seeds": sorted({parse_study_name(run["name"])[2] for run in runs}),
            "db": [part["settings"]["db"] for _, part in parts],
            "merged_from": [str(path) for path in paths],
        },
        "total_seconds": sum(part["total_seconds"] for _, part in parts),
        "search_seconds": sum(run["wall_seconds"] for run in runs),
    }


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's goal for every ``bo`` run that has greedy at its target: one row per variant and seed."""
    rows = []
    for target, block in results["targets"].items():
        if "greedy" not in block["runs"]:
            continue
        dense = block["dense_heldout"]
        runs = {run["name"]: run for sampler_runs in block["runs"].values() for run in sampler_runs}
        greedy = degradation(block["runs"]["greedy"][0]["best_heldout"], dense)
        for variant in BO_VARIANTS:
            for bo in block["runs"].get(variant, []):
                seed = parse_study_name(bo["name"])[2]
                anchors = [runs.get(study_name(a, float(target), seed)) for a in ANCHORS]
                anchor = min((degradation(a["best_heldout"], dense) for a in anchors if a), default=None)
                at_50 = degradation(bo["best_heldout"], dense)
                at_25 = degradation(dict(bo["heldout_checks"]).get(25, bo["best_heldout"]), dense)
                reduction = 1.0 - at_50 / greedy
                rows.append(
                    {
                        "target": float(target),
                        "variant": variant,
                        "seed": seed,
                        "greedy": greedy,
                        "anchor": anchor,
                        "bo_50": at_50,
                        "bo_25": at_25,
                        "reduction_vs_greedy": reduction,
                        "beats_greedy_by_25pct": reduction >= REDUCTION_GOAL,
                        "beats_anchors": None if anchor is None else at_50 < anchor,
                        "result_by_25": at_25 <= at_50 + 1e-12,
                    }
                )
    return rows


def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value:+.1%}"

    def yes(flag: bool | None) -> str:
        return "—" if flag is None else "yes" if flag else "**no**"

    lines = [
        "## Issue 5's goal, seed by seed",
        "",
        "Held-out degradation vs dense. Greedy-uniform (TEAL) is deterministic; the anchor is the better of `was` "
        "and `evopress` on the same seed (— where neither ran); `bo` @25 is the held-out degradation of its best "
        "trial after 25 evaluations. The goal: a reduction vs greedy of at least "
        f"{REDUCTION_GOAL:.0%}, beating the anchor, and the 50-evaluation result reached by 25.",
        "",
        "| target | bo variant | seed | greedy | best of was/evopress | bo @50 | bo @25 | reduction vs greedy "
        f"| ≥ {REDUCTION_GOAL:.0%} smaller than greedy | beats was/evopress | result within 25 evaluations |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']:.0%} | {r['variant']} | {r['seed']} | {pct(r['greedy'])} | {pct(r['anchor'])} | "
            f"{pct(r['bo_50'])} | {pct(r['bo_25'])} | {r['reduction_vs_greedy']:.2%} | "
            f"{yes(r['beats_greedy_by_25pct'])} | {yes(r['beats_anchors'])} | {yes(r['result_by_25'])} |"
        )
    return [*lines, ""]


def write_outputs(results: dict[str, Any], out: Path, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / f"allocators{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    settings = results["settings"]
    merged = settings.get("merged_from")
    timing = (
        f"searches {results['search_seconds'] / 3600:.2f} h in all (trial timestamps); the {len(merged)} "
        f"invocations merged here took {results['total_seconds'] / 3600:.2f} h (a rerun on a kept database "
        "reuses finished studies; wall times depend on what else the machine ran)"
        if merged
        else f"searches {results['search_seconds'] / 3600:.2f} h in all (trial timestamps), this invocation "
        f"{results['total_seconds'] / 3600:.2f} h (a rerun on a kept database reuses finished studies)"
    )
    databases = settings["db"] if isinstance(settings["db"], list) else [settings["db"]]
    lines = [
        "# Allocators head to head on SmolLM2-135M",
        "",
        f"`{results.get('command', 'python bench/allocators.py')}` — pydoc corpus; calibration "
        f"{settings['calibration_sequences']} x {settings['seq_len']} tokens (the search objective), held-out "
        f"{settings['heldout_sequences']} x {settings['seq_len']} tokens from topics disjoint from calibration; "
        f"{settings['trials']} evaluations per search, seeds {settings['seeds']}; {timing}. "
        f"Database{'s' if len(databases) > 1 else ''}: {', '.join(f'`{db}`' for db in databases)}.",
        "",
    ]
    if results["ranking"]:
        r = results["ranking"]
        lines += [
            f"Ranking check: over {r['allocations']} allocations (uniform and random feasible ones at 50%), "
            f"calibration perplexity on {r['cheap_tokens']:,} tokens ranks them as on {r['full_tokens']:,} tokens "
            f"with Spearman ρ = {r['spearman']:.3f}.",
            "",
        ]
    for target, block in results["targets"].items():
        lines += [
            f"## Target {float(target):.0%} (dense held-out perplexity {block['dense_heldout']:.3f})",
            "",
            "| sampler | best calibration ppl (median, range) | best held-out ppl (median, range) "
            "| held-out degradation vs dense | first beat greedy at evaluation | wall s | sampler share |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in block["samplers"].items():
            lo, hi = s["best_calibration_range"]
            hlo, hhi = s["best_heldout_range"]
            dlo, dhi = s["heldout_degradation_range"]
            lines.append(
                f"| {name} | {s['best_calibration_median']:.3f} ({lo:.3f}–{hi:.3f}) | {s['best_heldout_median']:.3f} "
                f"({hlo:.3f}–{hhi:.3f}) | {s['heldout_degradation_median']:+.1%} ({dlo:+.1%}–{dhi:+.1%}) | "
                f"{s['first_beat_greedy']} | {s['wall_seconds_median']:.0f} | {s['sampler_share_median']:.1%} |"
            )
        lines.append("")
    lines += goal_lines(goal_rows(results))
    (out / f"allocators{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))

    targets = list(results["targets"].items())
    figure, axes = plt.subplots(1, len(targets), figsize=(7 * len(targets), 4.5), squeeze=False)
    for axis, (target, block) in zip(axes[0], targets, strict=True):
        for name, runs in block["runs"].items():
            curves = [r["curve"] for r in runs]
            length = max(len(c) for c in curves)
            padded = np.array([c + [c[-1]] * (length - len(c)) for c in curves])
            color = f"C{SAMPLERS.index(name)}"  # one colour per sampler, the same in every panel
            if length == 1:  # one evaluation (uniform, greedy): a level line across the searches' budget
                axis.axhline(curves[0][0], color=color, linestyle="--", linewidth=1, label=f"{name} (1 evaluation)")
                axis.axhline(runs[0]["best_heldout"], color=color, linestyle=":", linewidth=1)
            else:
                axis.plot(np.arange(1, length + 1), np.median(padded, axis=0), color=color, label=name)
            by_checkpoint: dict[int, list[float]] = {}
            for run in runs:
                for k, value in run["heldout_checks"]:
                    by_checkpoint.setdefault(k, []).append(value)
            points = sorted(by_checkpoint)
            medians = [statistics.median(by_checkpoint[k]) for k in points]
            axis.plot(points, medians, "s", color=color, alpha=0.7)
        axis.axhline(block["dense_heldout"], color="black", linestyle=":", label="dense (held-out)")
        axis.set_yscale("log")
        axis.set_xlabel("evaluations")
        axis.set_ylabel("perplexity")
        axis.set_title(f"target {float(target):.0%}")
        axis.legend(fontsize=7, ncol=2)
    figure.suptitle(
        "lines: best-so-far calibration perplexity (median over seeds); "
        "squares: held-out perplexity of the best trial so far; dashed: uniform and greedy (one evaluation), "
        "dotted in their colour: their held-out perplexity",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(out / f"allocators{suffix}.png", dpi=120)


if __name__ == "__main__":
    main()
