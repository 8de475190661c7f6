"""Cost of one ``bo`` proposal, and the null-space optimiser against BoTorch's SLSQP path (reports figures).

    python bench/sampler_overhead.py           # n = 20, 50, 100, 200 and d = 30, 80; 3 repeats
    python bench/sampler_overhead.py --quick   # n = 20, 50 and d = 30; 1 repeat

Part 1, proposal time: a study on the synthetic objective is filled with ``n`` completed trials (half
random, half TPE, so the history has both spread and a good region), then ``bo`` proposes the next
trial; we time that whole proposal (history read, GP fit, acquisition, optimisation) and its parts. The
first proposal of a process also draws the cached hit-and-run pool: reported separately.

Part 2, acquisition optimisation on the same fitted model and acquisition function:

* ``botorch-slsqp``: what BoTorch does with the equality constraint,
  ``optimize_acqf(acq, bounds, q=1, num_restarts=8, raw_samples=512, equality_constraints=...)``, which
  draws its raw samples with its polytope sampler and runs SLSQP jointly over the restarts;
* ``nullspace``: ours, as a ``bo`` proposal runs it: raw points (the cached pool plus perturbations of
  the best points), 8 restarts, null-space L-BFGS-B rounds and a short SLSQP polish;
* ``same-starts``: both local optimisers from the same 8 starts (SLSQP with BoTorch's defaults,
  null-space as above), to separate the optimiser from the restart selection.

Writes ``bench/results/sampler_overhead{,_quick}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/sampler_overhead.py``: the root
    sys.path.insert(0, str(Path(__file__).parents[1]))

from bench._common import RESULTS, machine, write_results


def _history_study(dim: int, n: int, seed: int):
    """A study of the synthetic objective holding ``n`` completed trials (half random, half TPE)."""
    import optuna

    from allocator.search.samplers import create_sampler, suggest_allocation
    from allocator.testing import SyntheticObjective

    objective = SyntheticObjective(dim=dim)
    space = objective.space
    study = optuna.create_study(sampler=create_sampler("random", space=space, seed=seed))
    study.optimize(lambda t: objective(suggest_allocation(t, space)), n_trials=n // 2)
    study.sampler = create_sampler("tpe", space=space, seed=seed)
    study.optimize(lambda t: objective(suggest_allocation(t, space)), n_trials=n - n // 2)
    return study, objective


def _frozen(study: Any, trial: Any) -> Any:
    """The stored (frozen) form of the running ``trial`` of ``study``: what a sampler is handed for it."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)


def _time_proposal(dim: int, n: int, seed: int) -> dict[str, float]:
    """One ``bo`` proposal after ``n`` trials, timed in parts (same code path as ``BoSampler.propose``)."""
    import torch

    from allocator.search.samplers import collect_history, create_sampler, gp_hyperparameters, single_threaded

    study, objective = _history_study(dim, n, seed)
    space = objective.space
    sampler = create_sampler("bo", space=space, seed=seed)
    options = sampler.options
    trial = _frozen(study, study.ask())
    # A running study has drawn its hit-and-run pool once (its cost is reported apart): warm it on the very
    # space this proposal searches (the pool is cached per space object and seed).
    with torch.device("cpu"), single_threaded():
        warm = sampler.search_space(collect_history(study, trial, space)).space
        warm.polytope_pool(seed=seed, size=options.raw_samples)
    parts: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.device("cpu"), single_threaded():
        hist = collect_history(study, trial, space)
        search = sampler.search_space(hist)
        t1 = time.perf_counter()
        model = sampler.fit(hist, search)  # a cold fit (no stored warm start): the worst case
        t2 = time.perf_counter()
        acqf = sampler.acquisition(model, hist, search, seed=0)
        box = sampler.acquisition_box(hist, search, model)
        sampler.optimize(acqf, box, hist, search, np.random.default_rng(seed))
        t3 = time.perf_counter()
        # A warm-started refit, as in a running study where the previous proposal stored its fit.
        sampler.fit(hist, search, warm_start=gp_hyperparameters(model, "full"))
        t4 = time.perf_counter()
    parts.update(
        history=t1 - t0,
        fit_cold=t2 - t1,
        fit_warm=t4 - t3,
        acquisition=t3 - t2,
        proposal_cold=t3 - t0,
        proposal_warm=(t1 - t0) + (t4 - t3) + (t3 - t2),
        phase=search.to_blocks is None,
    )
    return parts


def _compare(dim: int, n: int, seed: int) -> dict[str, Any]:
    """Part 2 on one fitted model: values reached and times."""
    import torch

    from allocator.search.samplers import SearchSpace, collect_history, create_sampler, single_threaded

    study, objective = _history_study(dim, n, seed)
    space = objective.space
    sampler = create_sampler("bo", space=space, seed=seed, profile_knots=None, trust_region=False)
    hist = collect_history(study, _frozen(study, study.ask()), space)
    search = SearchSpace(space=space, to_blocks=None)
    out: dict[str, Any] = {"dim": dim, "n": n, "seed": seed}
    with torch.device("cpu"), single_threaded(), torch.random.fork_rng():
        torch.manual_seed(seed)
        model = sampler.fit(hist, search)
        acqf = sampler.acquisition(model, hist, search, seed=0)
        space.polytope_pool(seed=seed, size=sampler.options.raw_samples)  # the cached pool, as in a running study
        out["botorch_slsqp"] = _botorch_slsqp(sampler, acqf, space)
        t = time.perf_counter()
        ours = sampler.optimize(acqf, space, hist, search, np.random.default_rng(seed))
        out["nullspace"] = {"seconds": time.perf_counter() - t, "value": float(ours.values[0])}
        out["same_starts"] = _same_starts(sampler, acqf, space, hist, search, seed)
    return out


def _botorch_slsqp(sampler: Any, acqf: Any, space: Any) -> dict[str, float]:
    """BoTorch's ``optimize_acqf`` with the equality constraint: seconds and the best value reached."""
    from botorch.optim import optimize_acqf

    from allocator.search.samplers import rank_candidates

    t = time.perf_counter()
    X, _ = optimize_acqf(
        acq_function=acqf,
        bounds=space.botorch_bounds(),
        q=1,
        num_restarts=sampler.options.num_restarts,
        raw_samples=sampler.options.raw_samples,
        equality_constraints=space.botorch_equality_constraints(normalized=False),
    )
    slsqp = rank_candidates(acqf, space.project(X.detach().reshape(-1, space.dim).numpy()))
    return {"seconds": time.perf_counter() - t, "value": float(slsqp.values[0])}


def _same_starts(sampler: Any, acqf: Any, space: Any, hist: Any, search: Any, seed: int) -> dict[str, Any]:
    """Both local optimisers from the same 8 starts: seconds and the best value each reached."""
    from allocator.search.samplers import optimize_nullspace, optimize_slsqp, select_starts

    starts, _ = select_starts(acqf, sampler.raw_points(space, hist, search, np.random.default_rng(seed)), 8)
    t = time.perf_counter()
    same_ours = optimize_nullspace(acqf, space, starts)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    same_slsqp = optimize_slsqp(acqf, space, starts)
    t_slsqp = time.perf_counter() - t
    return {
        "nullspace": {"seconds": t_ours, "value": float(same_ours.values[0])},
        "slsqp": {"seconds": t_slsqp, "value": float(same_slsqp.values[0])},
    }


def main(argv: list[str] | None = None) -> int:
    """Time proposals and compare the acquisition optimisers; write sampler_overhead{,_quick}.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 20, 50; d = 30; 1 repeat")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    ns = [20, 50] if args.quick else [20, 50, 100, 200]
    dims = [30] if args.quick else [30, 80]
    repeats = args.repeats or (1 if args.quick else 3)
    load_before = os.getloadavg()
    pool_seconds = _pool_seconds(dims)
    proposals = _proposals(dims, ns, repeats)
    comparisons = _comparisons([50] if args.quick else [50, 100], repeats if not args.quick else 1)
    payload = {
        "machine": {**machine("platform", "cpus"), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "pool_seconds": pool_seconds,
        "proposals": proposals,
        "comparisons": comparisons,
    }
    name = "sampler_overhead_quick" if args.quick else "sampler_overhead"
    write_results(RESULTS, name, payload, _markdown(payload, dims, ns), indent=1, json_newline=False)
    return 0


def _pool_seconds(dims: list[int]) -> dict[int, float]:
    """The once-per-process pool draw (hit-and-run) per dimension, reported apart from the per-proposal cost."""
    from allocator.testing import SyntheticObjective

    pool_seconds = {}
    for dim in dims:
        space = SyntheticObjective(dim=dim).space
        t = time.perf_counter()
        space.polytope_pool(seed=12345, size=512)
        pool_seconds[dim] = time.perf_counter() - t
        print(f"pool d={dim}: {pool_seconds[dim]:.2f} s (once per process and seed)", flush=True)
    return pool_seconds


def _proposals(dims: list[int], ns: list[int], repeats: int) -> list[dict[str, Any]]:
    """Part 1: one timed proposal per dimension, history length and repeat."""
    proposals: list[dict[str, Any]] = []
    for dim in dims:
        for n in ns:
            for r in range(repeats):
                parts = _time_proposal(dim, n, r)
                proposals.append({"dim": dim, "n": n, "repeat": r, **parts})
                print(
                    f"proposal d={dim} n={n} rep={r}: cold {parts['proposal_cold']:.2f} s, warm "
                    f"{parts['proposal_warm']:.2f} s (fit cold {parts['fit_cold']:.2f} / warm "
                    f"{parts['fit_warm']:.2f}, acquisition {parts['acquisition']:.2f})",
                    flush=True,
                )
    return proposals


def _comparisons(ns: list[int], repeats: int) -> list[dict[str, Any]]:
    """Part 2: the acquisition optimisers on one fitted model (d = 30), per history length and repeat."""
    comparisons: list[dict[str, Any]] = []
    for n in ns:
        for r in range(repeats):
            res = _compare(30, n, 100 + r)
            comparisons.append(res)
            b, o, s = res["botorch_slsqp"], res["nullspace"], res["same_starts"]
            print(
                f"compare d=30 n={n} rep={r}: botorch-slsqp {b['seconds']:.2f} s ({b['value']:.6f}) | nullspace "
                f"{o['seconds']:.2f} s ({o['value']:.6f}) | same starts: nullspace {s['nullspace']['seconds']:.2f} s "
                f"({s['nullspace']['value']:.6f}), slsqp {s['slsqp']['seconds']:.2f} s ({s['slsqp']['value']:.6f})",
                flush=True,
            )
    return comparisons


def _markdown(p: dict[str, Any], dims: list[int], ns: list[int]) -> str:
    """The report: proposal times, then the acquisition optimisers compared."""
    lines = [*_proposal_lines(p, dims, ns), *_comparison_lines(p), *_same_start_lines(p)]
    return "\n".join(lines) + "\n"


def _proposal_lines(p: dict[str, Any], dims: list[int], ns: list[int]) -> list[str]:
    """The machine, and the median proposal times per dimension and history length."""
    m = p["machine"]
    lines = [
        "# `bo` proposal overhead",
        "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs; load average before {m['loadavg_before'][0]:.1f}, after "
        f"{m['loadavg_after'][0]:.1f} (the machine is shared; timings are medians over repeats, torch on one "
        "thread as the sampler runs it).",
        "",
        "## One proposal (history read + GP fit + qLogNEI + null-space optimisation)",
        "",
        "`cold` fits the GP from the prior's mode (first proposal of a study or phase); `warm` starts the fit "
        "from the hyperparameters stored with the previous proposal, as every later proposal does.",
        "",
        "| d | n | proposal warm (s) | proposal cold (s) | fit warm (s) | fit cold (s) | acquisition (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in dims:
        for n in ns:
            rows = [r for r in p["proposals"] if r["dim"] == d and r["n"] == n]
            if not rows:
                continue
            med = {
                k: statistics.median(r[k] for r in rows)
                for k in ("proposal_warm", "proposal_cold", "fit_warm", "fit_cold", "acquisition")
            }
            lines.append(
                f"| {d} | {n} | {med['proposal_warm']:.2f} | {med['proposal_cold']:.2f} | "
                f"{med['fit_warm']:.2f} | {med['fit_cold']:.2f} | {med['acquisition']:.2f} |"
            )
    return lines


def _comparison_lines(p: dict[str, Any]) -> list[str]:
    """The pool's cost, and BoTorch's SLSQP path against the null-space optimiser on the same model."""
    pools = ", ".join(f"d={d}: {s:.2f} s" for d, s in p["pool_seconds"].items())
    lines = [
        "",
        f"Once per process and seed, the hit-and-run pool of 512 feasible points: {pools}.",
        "",
        "## Acquisition optimisation on the same fitted model (d = 30)",
        "",
        "Values are qLogNEI (log scale; higher is better). `botorch-slsqp` = `optimize_acqf` with the equality "
        "constraint (its own polytope raw samples, SLSQP); `nullspace` = our whole acquisition step.",
        "",
        "| n | seed | botorch-slsqp s | value | nullspace s | value | speed-up | Δvalue (ours − slsqp) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios, deltas = [], []
    for c in p["comparisons"]:
        b, o = c["botorch_slsqp"], c["nullspace"]
        ratio = b["seconds"] / o["seconds"]
        ratios.append(ratio)
        deltas.append(o["value"] - b["value"])
        lines.append(
            f"| {c['n']} | {c['seed']} | {b['seconds']:.2f} | {b['value']:.6f} | {o['seconds']:.2f} | "
            f"{o['value']:.6f} | {ratio:.1f}× | {o['value'] - b['value']:+.2e} |"
        )
    if ratios:
        lines += [
            "",
            f"Median speed-up {statistics.median(ratios):.1f}× (min {min(ratios):.1f}×); ours reached at least "
            f"SLSQP's value (within 1e-6) in {sum(d >= -1e-6 for d in deltas)}/{len(deltas)} cases.",
        ]
    return lines


def _same_start_lines(p: dict[str, Any]) -> list[str]:
    """The two local optimisers alone, from the same starts."""
    lines = [
        "",
        "### Same starts: the local optimisers alone",
        "",
        "| n | seed | slsqp s | value | nullspace s | value | speed-up | Δvalue |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in p["comparisons"]:
        s, o = c["same_starts"]["slsqp"], c["same_starts"]["nullspace"]
        lines.append(
            f"| {c['n']} | {c['seed']} | {s['seconds']:.2f} | {s['value']:.6f} | {o['seconds']:.2f} | "
            f"{o['value']:.6f} | {s['seconds'] / o['seconds']:.1f}× | {o['value'] - s['value']:+.2e} |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
