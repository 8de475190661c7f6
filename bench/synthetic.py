"""Best-so-far regret of every sampler on the synthetic 30-block objective (not a test: it reports figures).

    python bench/synthetic.py            # 5 seeds x 50 evaluations, all samplers + BO variants
    python bench/synthetic.py --quick    # 2 seeds x 20 evaluations, a smoke run

Writes ``bench/results/synthetic{,_quick}.json``, ``.md`` and ``.png``. Regret is ``f(best so far) − f*``
with ``f*`` the exact constrained optimum of :class:`allocator.testing.SyntheticObjective`; the objective
is fixed (seed 0) and the samplers' seeds vary.
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

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/synthetic.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

from bench._common import RESULTS, machine, results_name, write_results

# (label, sampler name, options)
SAMPLERS: list[tuple[str, str, dict[str, Any]]] = [
    ("uniform", "uniform", {}),
    ("random", "random", {}),
    ("tpe", "tpe", {}),
    ("cmaes", "cmaes", {}),
    ("was", "was", {}),
    ("evopress", "evopress", {}),
    ("bo", "bo", {}),
]
# BO variants: the plain GP, a TuRBO-style trust region, a depth profile of K knots refined later.
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("bo-plain", "bo", {"trust_region": False, "profile_knots": None}),
    ("bo-trust-region", "bo", {"trust_region": True, "profile_knots": None}),
    ("bo-knots4", "bo", {"trust_region": False, "profile_knots": 4}),
    ("bo-knots6", "bo", {"trust_region": False, "profile_knots": 6}),
    ("bo-knots4-tr", "bo", {"trust_region": True, "profile_knots": 4}),
    ("bo-knots4-tr-switch20", "bo", {"trust_region": True, "profile_knots": 4, "profile_trials": 20}),
    (
        "bo-knots4-tr0.4-switch20",
        "bo",
        {"trust_region": True, "trust_region_init": 0.4, "profile_knots": 4, "profile_trials": 20},
    ),
    ("bo-knots6-tr", "bo", {"trust_region": True, "profile_knots": 6}),
]


def _run(job: tuple[str, str, dict[str, Any], int, int]) -> dict[str, Any]:
    """One configuration's run for one seed (in a worker process): its best-so-far regret per evaluation."""
    import torch

    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from allocator.testing import SyntheticObjective, run_sampler

    label, name, options, seed, n = job
    objective = SyntheticObjective()
    start = time.perf_counter()
    values = run_sampler(name, objective=objective, seed=seed, n_trials=n, **options)
    elapsed = time.perf_counter() - start
    best = np.minimum.accumulate(values)
    regret = best - objective.optimal_value
    # Samplers with fewer proposals (uniform) keep their best for the remaining evaluations.
    regret = np.concatenate([regret, np.full(n - regret.size, regret[-1])])
    return {"label": label, "seed": seed, "regret": regret.tolist(), "seconds": elapsed, "trials": int(values.size)}


def main(argv: list[str] | None = None) -> int:
    """Run every configuration for every seed, two processes side by side; write synthetic{,_quick}.*."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds x 20 evaluations")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--evals", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 5)
    n = args.evals or (20 if args.quick else 50)
    configs = SAMPLERS + VARIANTS
    if args.only:
        configs = [c for c in configs if c[0] in args.only]
    jobs = [(label, name, opts, seed, n) for label, name, opts in configs for seed in range(seeds)]
    print(
        f"synthetic benchmark: {len(configs)} configurations x {seeds} seeds x {n} evaluations, {args.jobs} processes",
        flush=True,
    )
    from allocator.testing import SyntheticObjective

    objective = SyntheticObjective()
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, res in enumerate(pool.map(_run, jobs), 1):
            runs.append(res)
            print(
                f"[{i}/{len(jobs)}] {res['label']:<16} seed {res['seed']}  final regret "
                f"{res['regret'][-1]:8.3f}  {res['seconds']:6.1f} s  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    summary = _summarise(runs, configs, n)
    name = results_name("synthetic", args.quick)
    payload = {
        "objective": {
            "dim": objective.dim,
            "target": objective.target,
            "optimal_value": objective.optimal_value,
            "uniform_value": objective(objective.space.uniform_vector()),
        },
        "seeds": seeds,
        "evaluations": n,
        "machine": machine("platform", "cpus"),
        "summary": summary,
        "runs": runs,
    }
    markdown = _markdown(payload)
    write_results(RESULTS, name, payload, markdown, indent=1, json_newline=False, echo=False)
    _plot(runs, configs, n, RESULTS / f"{name}.png")
    print(markdown)
    return 0


def _summarise(runs: list[dict[str, Any]], configs: list[tuple[str, str, dict]], n: int) -> dict[str, Any]:
    """Per configuration: median regret at every tenth evaluation, final regret per seed, median seconds."""
    out: dict[str, Any] = {}
    checkpoints = [c for c in (10, 20, 30, 40, 50) if c <= n]
    for label, _, opts in configs:
        mine = [r for r in runs if r["label"] == label]
        if not mine:
            continue
        R = np.array([r["regret"] for r in mine])
        out[label] = {
            "options": opts,
            "median_regret": {str(c): float(np.median(R[:, c - 1])) for c in checkpoints},
            "final_regret_per_seed": [float(v) for v in R[:, -1]],
            "median_final_regret": float(np.median(R[:, -1])),
            "median_seconds": float(np.median([r["seconds"] for r in mine])),
        }
    return out


def _markdown(p: dict[str, Any]) -> str:
    """The report: one row of median regrets per configuration."""
    o, s = p["objective"], p["summary"]
    lines = [
        "# Synthetic benchmark: best-so-far regret",
        "",
        f"Objective: `SyntheticObjective()` (d = {o['dim']}, target {o['target']}), f* = {o['optimal_value']:.4f}, "
        f"uniform vector f = {o['uniform_value']:.4f}. {p['seeds']} sampler seeds, {p['evaluations']} evaluations. "
        f"Regret = best value so far − f* (median over seeds). Machine: {p['machine']['platform']}, "
        f"{p['machine']['cpus']} CPUs (shared, loaded).",
        "",
    ]
    cps = list(next(iter(s.values()))["median_regret"].keys())
    lines.append("| sampler | " + " | ".join(f"@{c}" for c in cps) + " | final regret per seed | s/run |")
    lines.append("|---|" + "---|" * len(cps) + "---|---|")
    for label, v in s.items():
        per_seed = ", ".join(f"{x:.2f}" for x in v["final_regret_per_seed"])
        lines.append(
            f"| {label} | "
            + " | ".join(f"{v['median_regret'][c]:.3f}" for c in cps)
            + f" | {per_seed} | {v['median_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(runs: list[dict[str, Any]], configs: list[tuple[str, str, dict]], n: int, path: Path) -> None:
    """Median regret against evaluations (interquartile range shaded): samplers, then BO variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    x = np.arange(1, n + 1)
    for ax, group, title in (
        (axes[0], SAMPLERS, "samplers"),
        (axes[1], VARIANTS, "BO variants"),
    ):
        for label, _, _ in group:
            mine = [r["regret"] for r in runs if r["label"] == label]
            if not mine:
                continue
            R = np.maximum(np.array(mine), 1e-3)
            med = np.median(R, axis=0)
            ax.plot(x, med, label=label)
            ax.fill_between(x, np.quantile(R, 0.25, axis=0), np.quantile(R, 0.75, axis=0), alpha=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("evaluations")
        ax.set_title(f"{title}: median regret (IQR shaded)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("best value so far − f*")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
