"""The frontier design, measured on the synthetic 30-block objective before any model runs (not a test).

    python bench/frontier_synthetic.py                 # targets 0.4-0.7, 3 seeds, 20 evaluations per target
    python bench/frontier_synthetic.py --per-target 10 # a smoke run

At equal budget, per target, the relative regret ``f(best at t) / f*(t) − 1`` (``f*`` the exact constrained
optimum of :class:`allocator.testing.SyntheticObjective` at that target) of:

* ``single``: one single-target ``bo`` study per target, ``N`` evaluations each (``4N`` in all);
* ``frontier-bo``: one frontier study over the four targets with the budget of two single-target studies
  (``2N`` evaluations), ``bo`` learning one GP across targets and choosing where to evaluate;
* ``frontier-bo-turn``: the same, but the targets take turns (``target_choice: turn``) instead of the choice
  by expected gain per cost;
* ``frontier-in-turn``: the same ``2N`` evaluations as independent ``bo`` runs, one per target, targets in
  turn (what sharing one model across targets is measured against).

Writes ``bench/results/frontier_synthetic.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/frontier_synthetic.py``: the root
    sys.path.insert(0, str(Path(__file__).parents[1]))

from bench._common import RESULTS, machine, write_results

TARGETS = (0.4, 0.5, 0.6, 0.7)


def _job(job: tuple[str, int, int]) -> dict[str, Any]:
    """One row's run for one seed (in a worker process): relative regret and evaluations at each target."""
    import torch

    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from allocator.search.samplers import TargetsInTurn, create_sampler
    from allocator.testing import SyntheticObjective, optimise_frontier, run_frontier, run_sampler

    kind, seed, per_target = job
    objectives = {t: SyntheticObjective(target=t) for t in TARGETS}
    start = time.perf_counter()
    best: dict[float, float] = {}
    counts: dict[float, int] = {}
    if kind == "single":
        for t, objective in objectives.items():
            values = run_sampler("bo", objective=objective, seed=seed, n_trials=per_target)
            best[t], counts[t] = float(values.min()), int(values.size)
    else:
        n = 2 * per_target
        if kind == "frontier-bo":
            pairs = run_frontier("bo", objectives=objectives, seed=seed, n_trials=n)
        elif kind == "frontier-bo-turn":
            pairs = run_frontier("bo", objectives=objectives, seed=seed, n_trials=n, target_choice="turn")
        else:
            # independent per-target bo runs, targets in turn (the frontier baseline)
            spaces = {t: o.space for t, o in objectives.items()}
            in_turn = TargetsInTurn(spaces=spaces, build=lambda s: create_sampler("bo", space=s, seed=seed))
            pairs = optimise_frontier(in_turn, objectives=objectives, n_trials=n)
        for t in TARGETS:
            mine = [v for target, v in pairs if target == t]
            best[t], counts[t] = (min(mine) if mine else float("inf")), len(mine)
    regret = {f"{t:g}": best[t] / objectives[t].optimal_value - 1.0 for t in TARGETS}
    return {
        "kind": kind,
        "seed": seed,
        "regret": regret,
        "evaluations": {f"{t:g}": counts[t] for t in TARGETS},
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every row for every seed, two processes side by side; write frontier_synthetic.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-target", type=int, default=20, help="N: evaluations of each single-target study")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--kinds", nargs="+", default=None, help="Run only these rows (default: all).")
    args = parser.parse_args(argv)
    kinds = ("single", "frontier-bo", "frontier-bo-turn", "frontier-in-turn")
    kinds = tuple(args.kinds or kinds)
    jobs = [(kind, seed, args.per_target) for seed in range(args.seeds) for kind in kinds]
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, run in enumerate(pool.map(_job, jobs), 1):
            runs.append(run)
            regrets = ", ".join(f"{t} {100 * r:.1f}%" for t, r in run["regret"].items())
            print(
                f"[{i}/{len(jobs)}] {run['kind']:<16} seed {run['seed']}: {regrets} ({run['seconds']:.0f} s)",
                flush=True,
            )
    payload = {
        "targets": TARGETS,
        "per_target": args.per_target,
        "seeds": args.seeds,
        "machine": machine("platform", "cpus"),
        "median_regret": {
            kind: {
                f"{t:g}": float(np.median([r["regret"][f"{t:g}"] for r in runs if r["kind"] == kind])) for t in TARGETS
            }
            for kind in kinds
        },
        "runs": runs,
    }
    write_results(RESULTS, "frontier_synthetic", payload, _markdown(payload), indent=1, json_newline=False)
    return 0


def _markdown(p: dict[str, Any]) -> str:
    """The report: median regret per row and target, then every run."""
    n = p["per_target"]
    lines = [
        "# Frontier design on the synthetic objective",
        "",
        f"`SyntheticObjective(target=t)` (d = 30) at targets {', '.join(f'{t:g}' for t in p['targets'])}; "
        f"relative regret `f(best at t) / f*(t) − 1`, median over {p['seeds']} sampler seeds. Budget: `single` is "
        f"one `bo` study per target with {n} evaluations each ({4 * n} in all); every frontier row spends "
        f"{2 * n} evaluations (two single-target studies' budget). Machine: {p['machine']['platform']}, "
        f"{p['machine']['cpus']} CPUs (shared). Rerun: `python bench/frontier_synthetic.py --per-target {n}`.",
        "",
        "| | " + " | ".join(f"t = {t:g}" for t in p["targets"]) + " |",
        "|---|" + "---|" * len(p["targets"]),
    ]
    for kind, regrets in p["median_regret"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{100 * regrets[f'{t:g}']:.2f}%" for t in p["targets"]) + " |")
    lines += ["", "Per seed (relative regret, evaluations at each target):", ""]
    for run in p["runs"]:
        cells = ", ".join(f"{t}: {100 * r:.2f}% ({run['evaluations'][t]})" for t, r in run["regret"].items())
        lines.append(f"- {run['kind']} seed {run['seed']}: {cells}; {run['seconds']:.0f} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
