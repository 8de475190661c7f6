"""How much of a held-out figure is arithmetic: stored allocations re-evaluated here, and under rounding noise.

Why: the same uniform allocation at 60%, on the same tokens, read +205.2% held-out degradation in one run
(`bench/results/allocators-parts/objective/allocators.md`) and +195.3% in another, on machines whose dense
perplexities agree to seven digits and whose package versions are the same. The runs differ in the host (the
platform string): CPU kernels round differently, and hard thresholds turn last-bit differences into different
zeroed inputs, which compound over 30 blocks. This benchmark measures that effect instead of guessing it:

* ``here``: each allocation of a results file (its chosen ``vector``) evaluated on this machine, on the same
  held-out and out-of-domain sequences, at exactly its target (``quantile`` rule), next to the figure the file
  records (measured on another machine when the file came from one);
* ``perturbed``: the same, with every weight of the model multiplied by ``1 + ε·N(0, 1)`` (ε = 2⁻²³, float32's
  rounding unit; seeded), for a few seeds: the spread is the noise floor of a held-out figure, and what a
  comparison between allocators must exceed. Greedy split tables and the dense reference stay unperturbed.

The relative spread is measured on the benchmark's 16 sequences per corpus; per-sequence figures are kept, so
the spread of the mean can be read for fewer sequences too.

Run: ``python bench/heldout_noise.py --results bench/results/allocators.json --targets 0.6`` (tens of minutes
on 2 CPU cores). Writes ``heldout_noise.{json,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/heldout_noise.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import torch
from scipy.stats import spearmanr

from bench._allocator_files import databases_of, with_role_counts
from bench._common import RESULTS, RUNS, environment, write_results
from bench._protocol import BASE_BUDGET, CORPORA, study_config
from storage import Database
from studies import open_session

EPSILON = 2.0**-23


def _settings(results: dict[str, Any]) -> argparse.Namespace:
    """The data and search settings the results file was measured with (so the tokens are the same)."""
    keys = (
        "seq_len",
        "calibration_sequences",
        "search_sequences",
        "validation_sequences",
        "heldout_sequences",
        "greedy_sequences",
    )
    settings = with_role_counts(results["settings"])
    return argparse.Namespace(**{k: settings[k] for k in keys}, screen=4, promote=[8])


@torch.no_grad()
def perturb(model: torch.nn.Module, originals: dict[str, torch.Tensor], seed: int) -> None:
    """Every floating-point parameter at ``original · (1 + ε·N(0, 1))``; seed 0 restores the originals."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        original = originals[name]
        if seed == 0:
            parameter.copy_(original)
        else:
            noise = torch.randn(original.shape, generator=generator, dtype=torch.float64)
            parameter.copy_((original.double() * (1.0 + EPSILON * noise)).to(parameter.dtype))


def _figures(session: Any, vector: list[float], role: str, dense: float) -> dict[str, Any]:
    evaluation = session.evaluate(vector, role, rule="quantile")
    return {
        "perplexity": evaluation.perplexity,
        "degradation": (evaluation.perplexity - dense) / dense,
        "measured_sparsity": evaluation.measured_sparsity,
        "sequence_nll": [float(v) for v in evaluation.sequence_nll],
    }


def _load_runs(paths: list[Path], targets: list[float], samplers: list[str] | None) -> tuple[list[dict], list[dict]]:
    """The chosen allocations of every results file (the first file, and a merged file's first database, wins a
    name), and the provenance of each file's databases."""
    runs: dict[str, dict[str, Any]] = {}
    sources = []
    for path in paths:
        source = json.loads(path.read_text())
        for db, info in databases_of(source).items():  # a merged file may span databases
            sources.append({"file": f"{path} ({db})", "environment": info.get("environment"), "dense": info["dense"]})
        for run in source["runs"]:
            if any(abs(run["target"] - t) < 1e-9 for t in targets) and (not samplers or run["sampler"] in samplers):
                runs.setdefault(run["name"], {**run, "settings": _settings(source)})
    return list(runs.values()), sources


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, nargs="+", default=[RESULTS / "allocators.json"])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.6])
    parser.add_argument("--samplers", nargs="+", default=None, help="Only these samplers' allocations.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="Perturbation seeds (0: none).")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="A heldout_noise.json from this machine: its rows are kept."
    )
    parser.add_argument("--db", type=Path, default=RUNS / "heldout_noise.db", help="Artifacts (kept).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    """Re-evaluate the files' allocations here, unperturbed and perturbed; write heldout_noise.{json,md}."""
    args = build_parser().parse_args()
    command = shlex.join(["python", "bench/heldout_noise.py", *sys.argv[1:]])
    started = time.perf_counter()
    runs, sources = _load_runs(args.results, args.targets, args.samplers)
    reused = _reused_rows(args.reuse)
    sessions = _sessions(Database(f"sqlite:///{args.db}"), runs)
    originals = {
        split: {n: p.detach().clone() for n, p in s.loaded.model.named_parameters()} for split, s in sessions.items()
    }
    first = next(iter(sessions.values()))
    dense = {role: first.evaluate(0.0, role, rule="threshold").perplexity for role in CORPORA}
    print(f"dense here {dense}; in the files {[s['dense'] for s in sources]}", flush=True)
    out: list[dict[str, Any]] = []
    for seed in [0, *args.seeds]:
        for split, session in sessions.items():
            perturb(session.loaded.model, originals[split], seed)
        for run in runs:
            key = (run["name"], seed)
            out.append(reused[key] if key in reused else _row(sessions[run["split"]], run, seed, dense))
    results = {
        "command": command,
        "environment": environment(),
        "sources": sources,
        "epsilon": EPSILON,
        "dense_here": dense,
        "rows": out,
        "seconds": time.perf_counter() - started,
    }
    write_results(args.out, "heldout_noise", results, report(results))


def _reused_rows(path: Path | None) -> dict[tuple[str, int], dict[str, Any]]:
    """The rows of an earlier heldout_noise.json of this machine and this ε, by (allocation, seed)."""
    if path is None:
        return {}
    previous = json.loads(path.read_text())
    if previous["environment"]["platform"] != environment()["platform"] or previous["epsilon"] != EPSILON:
        raise SystemExit(f"{path}: measured on another machine or with another ε; not reused.")
    return {(row["name"], row["seed"]): row for row in previous["rows"]}


def _sessions(database: Database, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One session per site split the allocations use (one model each, perturbed alike); notes each run's split."""
    sessions: dict[str, Any] = {}
    for run in runs:
        config = study_config(run["sampler"], run["target"], 0, BASE_BUDGET, run["settings"], source="noise")
        run["split"] = config.sparsity.split
        if run["split"] not in sessions:
            sessions[run["split"]] = open_session(database, config)
    return sessions


def _row(session: Any, run: dict[str, Any], seed: int, dense: dict[str, float]) -> dict[str, Any]:
    """One allocation evaluated under perturbation ``seed`` on both corpora, next to its recorded figures."""
    row = {"name": run["name"], "sampler": run["sampler"], "target": run["target"], "seed": seed}
    for role in CORPORA:
        row[role] = _figures(session, run["vector"], role, dense[role])
        row[role]["recorded"] = run[role]["degradation"]
    print(
        f"{run['name']:<20} perturbation {seed}: held-out {row['heldout']['degradation']:+.1%} "
        f"(recorded {run['heldout']['degradation']:+.1%}) ood {row['ood']['degradation']:+.1%} "
        f"(recorded {run['ood']['degradation']:+.1%})",
        flush=True,
    )
    return row


def _sequence_lines(rows: list[dict[str, Any]], names: list[str], seeds: list[int]) -> list[str]:
    """Whether the noise is independent per sequence: then the mean over n sequences has sd σ/√n."""
    by = {(r["name"], r["seed"]): r for r in rows}
    lines = ["", "Per sequence (mean NLL of each sequence, across the evaluations of an allocation):", ""]
    for role in CORPORA:
        per_sequence, of_mean = [], []
        for name in names:
            values = [by[(name, s)][role]["sequence_nll"] for s in seeds]
            per_sequence += [statistics.pstdev(column) for column in zip(*values, strict=True)]
            of_mean.append(statistics.pstdev([statistics.fmean(v) for v in values]))
        sigma, n, mean_sd = statistics.fmean(per_sequence), len(values[0]), statistics.fmean(of_mean)
        lines.append(
            f"- {role}: sd of one sequence's NLL {sigma:.4f} nats; sd of the {n}-sequence mean {mean_sd:.4f}"
            f" (independent sequences: {sigma / math.sqrt(n):.4f}). Implied sd of perplexity: "
            + ", ".join(f"{sigma / math.sqrt(k):.2%} at {k} sequences" for k in (16, 64, 256))
            + "."
        )
    return lines


def _goal_lines(rows: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    """Each bo variant's reduction of degradation versus greedy-uniform, per evaluation and on their mean."""
    by = {(r["name"], r["seed"]): r for r in rows}
    greedy = {r["target"]: r["name"] for r in rows if r["sampler"] == "greedy"}
    anchors = {(r["sampler"], r["target"], r["name"].rsplit("-s", 1)[1]): r["name"] for r in rows}
    names = list(dict.fromkeys(r["name"] for r in rows if r["sampler"].startswith("bo") and r["target"] in greedy))
    lines = [
        "",
        "Issue 12's comparison on this machine: each bo variant's reduction of held-out degradation versus",
        "greedy-uniform, for each evaluation (unperturbed, then each perturbation: both sides perturbed alike), and",
        "on the mean over the evaluations; 'best anchor' is the lower mean of `was` and `evopress` of the same seed.",
        "",
        "| allocation | corpus | reduction per evaluation | mean degradation | greedy mean | reduction of means "
        "| best anchor mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        target = by[(name, seeds[0])]["target"]
        seed = name.rsplit("-s", 1)[1]
        for role in CORPORA:
            mine = [by[(name, s)][role]["degradation"] for s in seeds]
            theirs = [by[(greedy[target], s)][role]["degradation"] for s in seeds]
            per = [1.0 - m / g for m, g in zip(mine, theirs, strict=True)]
            anchor_means = [
                statistics.fmean(by[(anchors[key], s)][role]["degradation"] for s in seeds)
                for key in ((a, target, seed) for a in ("was", "evopress"))
                if key in anchors
            ]
            anchor = f"{min(anchor_means):+.1%}" if anchor_means else "—"
            lines.append(
                f"| {name} | {role} | {', '.join(f'{v:.1%}' for v in per)} | {statistics.fmean(mine):+.1%} | "
                f"{statistics.fmean(theirs):+.1%} | {1.0 - statistics.fmean(mine) / statistics.fmean(theirs):.1%} "
                f"| {anchor} |"
            )
    return lines


def report(results: dict[str, Any]) -> str:
    """The markdown report: each allocation recorded, here and perturbed, the spread, per sequence, the goal."""
    rows = results["rows"]
    names = list(dict.fromkeys(r["name"] for r in rows))
    by = {(r["name"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    sources = results["sources"]
    files = ", ".join(f"`{s['file']}`" for s in sources)
    file_dense = "; ".join(
        f"{s['dense']['heldout']['perplexity']:.6f} / {s['dense']['ood']['perplexity']:.6f}" for s in sources
    )
    lines = [
        "# Held-out figures: another machine's arithmetic, and rounding noise",
        "",
        f"`{results['command']}` ({results['seconds'] / 60:.0f} min). Allocations from "
        f"{files}, re-evaluated here ({results['environment']['platform']}) on",
        "the same sequences (16 per corpus) at exactly their target; 'perturbed': every weight times 1 + ε·N(0,1),",
        f"ε = 2^-23, seeds {', '.join(map(str, seeds[1:]))}. Dense perplexity here "
        f"{results['dense_here']['heldout']:.6f} / {results['dense_here']['ood']:.6f} (held-out / out-of-domain); "
        f"in the files {file_dense}.",
        "",
        "| allocation | corpus | recorded | here | perturbed | spread (max − min of all) | relative |",
        "|---|---|---|---|---|---|---|",
    ]
    spreads: dict[str, list[float]] = {role: [] for role in CORPORA}
    for name in names:
        for role in CORPORA:
            here = by[(name, 0)][role]
            perturbed = [by[(name, s)][role]["degradation"] for s in seeds[1:]]
            ppl = [by[(name, s)][role]["perplexity"] for s in seeds]
            relative = (max(ppl) - min(ppl)) / statistics.fmean(ppl)
            spreads[role].append(relative)
            values = [here["degradation"], *perturbed]
            lines.append(
                f"| {name} | {role} | {here['recorded']:+.1%} | {here['degradation']:+.1%} | "
                f"{', '.join(f'{v:+.1%}' for v in perturbed)} | {max(values) - min(values):.1%} points | "
                f"{relative:.1%} of perplexity |"
            )
    lines += ["", "Summary:", ""]
    for role in CORPORA:
        recorded = [by[(n, 0)][role]["recorded"] for n in names]
        here = [by[(n, 0)][role]["degradation"] for n in names]
        lines.append(
            f"- {role}: median spread {statistics.median(spreads[role]):.1%} of perplexity (max "
            f"{max(spreads[role]):.1%}) over {len(seeds)} evaluations per allocation; recorded vs here, Spearman "
            f"{spearmanr(recorded, here).statistic:.3f} over {len(names)} allocations."
        )
    lines += _sequence_lines(rows, names, seeds)
    lines += _goal_lines(rows, seeds)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
