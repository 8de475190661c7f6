"""Nominal against measured sparsity, what meeting the target costs, and thresholds against k-winners-take-all.

On SmolLM2-135M with the pydoc corpus in its roles (calibration 64 x 256 tokens, held-out 16 x 256, no
shared document), for uniform allocations and a depth-graded one at 50% and 60% model-level sparsity:

1. **Measured sparsity on held-out text** with (a) thresholds from the dense calibration (what the project did
   before: nominal), (b) thresholds calibrated under the sparse model on the calibration tokens
   (``calibrate_allocation``, what an export writes), (c) the ``quantile`` rule (every pass zeroes exactly the
   target share: how trials are evaluated) and (d) k-winners-take-all (exact per token), with held-out
   perplexity and KL to the dense model for each.
2. **Cost**, measured in the same run: the quantile rule's evaluation time and the top-k rule's against the
   fixed-threshold rule's, and ``calibrate_allocation`` against one dense body pass over the same tokens.

Run: ``python bench/sparsity_rules.py`` (``--quick`` for a smoke run). Writes
bench/results/sparsity_rules.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/sparsity_rules.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import torch

from allocator import (
    Objective,
    SparseModel,
    calibrate,
    calibrate_allocation,
    compute_reference,
    load_model,
    load_text,
    make_token_sets,
)
from bench._common import RESULTS, results_name, write_results
from bench._timing import dense_body_seconds


def allocations(n_blocks: int, targets: list[float]) -> dict[str, torch.Tensor]:
    """Uniform at each target, and one graded by depth (shallow blocks denser) at the first target."""
    out = {f"uniform {t:.0%}": torch.full((n_blocks,), t, dtype=torch.float64) for t in targets}
    graded = torch.linspace(-0.12, 0.12, n_blocks, dtype=torch.float64) + targets[-1]
    out[f"graded {targets[-1]:.0%}"] = graded  # equal block weights: the mean is the target
    return out


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6])
    parser.add_argument("--calibration-sequences", type=int, default=64)
    parser.add_argument("--heldout-sequences", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    """Measure every allocation under every rule; write sparsity_rules{,_quick}.{json,md}."""
    args = build_parser().parse_args()
    if args.quick:
        args.targets, args.calibration_sequences, args.heldout_sequences = [0.6], 4, 2
    loaded = load_model("smollm2-135m")
    adapter = loaded.adapter
    counts = {"calibration": args.calibration_sequences, "heldout": args.heldout_sequences}
    sets = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=256, counts=counts)
    sparse_model = SparseModel(adapter, calibrate(adapter, sets.calibration))
    objective = Objective(sparse_model)
    reference = compute_reference(adapter, sets.heldout)
    body = dense_body_seconds(adapter, sets.calibration)
    rows = []
    for name, vector in allocations(adapter.n_blocks, args.targets).items():
        rows += _rules(objective, sparse_model, sets, reference, name, vector, body)
        print(f"{name}: " + ", ".join(f"{r['rule']} {r['measured']:.4f}" for r in rows[-4:]), flush=True)
    result = {"tokens": {k: int(v.numel()) for k, v in sets.sets.items()}, "body_pass_seconds": body, "rows": rows}
    write_results(args.out, results_name("sparsity_rules", args.quick), result, _markdown(result, args))


def _rules(
    objective: Objective,
    sparse_model: SparseModel,
    sets: Any,
    reference: Any,
    name: str,
    vector: torch.Tensor,
    body: float,
) -> list[dict[str, Any]]:
    """One allocation on the held-out tokens under each of the four rules, and its calibration's cost."""
    started = time.perf_counter()
    calibration = calibrate_allocation(sparse_model, vector, sets.calibration)
    calibrate_seconds = time.perf_counter() - started
    thresholds = calibration.thresholds(sparse_model.site_sparsities(vector))
    evaluations = {
        "dense thresholds (nominal)": objective.evaluate(vector, sets.heldout, reference=reference, rule="threshold"),
        "sparse-model thresholds (export)": objective.evaluate(
            vector, sets.heldout, reference=reference, rule="threshold", thresholds=thresholds
        ),
        "quantile (trials)": objective.evaluate(vector, sets.heldout, reference=reference, rule="quantile"),
        "k-winners-take-all": objective.evaluate(vector, sets.heldout, reference=reference, rule="topk"),
    }
    fixed = evaluations["sparse-model thresholds (export)"].seconds
    rows = []
    for rule, e in evaluations.items():
        site_error = torch.tensor(e.site_sparsity) - sparse_model.site_sparsities(vector)
        rows.append(
            {
                "allocation": name,
                "target": float(sparse_model.model_sparsity(vector)),
                "rule": rule,
                "measured": e.measured_sparsity,
                "worst_site_error": float(site_error.abs().max()),
                "perplexity": e.perplexity,
                "kl": e.kl,
                "seconds_over_fixed_thresholds": e.seconds / fixed,
            }
        )
    rows[-4]["calibrate_allocation_over_body_pass"] = calibrate_seconds / body
    return rows


def _markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The report: one row per allocation and rule, then what calibrating one allocation costs."""
    rows = result["rows"]
    lines = [
        "# Nominal and measured sparsity; thresholds and k-winners-take-all",
        "",
        f"`python bench/sparsity_rules.py{' --quick' if args.quick else ''}`: SmolLM2-135M, thresholds calibrated on "
        f"{result['tokens']['calibration']:,} tokens, figures on {result['tokens']['heldout']:,} held-out tokens "
        "from other documents; KL to the dense model per token.",
        "",
        "| allocation | rule | measured sparsity | worst site (points) | held-out perplexity | KL | time vs fixed "
        "thresholds |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['allocation']} | {r['rule']} | {r['measured']:.4f} | {100 * r['worst_site_error']:.1f} "
            f"| {r['perplexity']:.3f} | {r['kl']:.4f} | {r['seconds_over_fixed_thresholds']:.2f} |"
            for r in rows
        ],
        "",
        "Calibrating one allocation's thresholds under the sparse model costs "
        + ", ".join(
            f"{r['calibrate_allocation_over_body_pass']:.2f}x ({r['allocation']})"
            for r in rows
            if "calibrate_allocation_over_body_pass" in r
        )
        + " one dense body pass over the calibration tokens.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
