"""The KL objective's dense reference: how many top tokens it must keep to rank allocations as the full KL does.

On SmolLM2-135M (vocabulary 49,152), over two sets of allocations at a target (every one at exactly its
target sparsity, the quantile rule): the uniform one with random feasible ones (far apart in quality), and
the uniform one with small feasible perturbations of it (close in quality, as a search's good candidates
are), on 8 x 256 search tokens: the mean per-token
KL(P_dense ‖ Q_sparse) over the whole vocabulary (dense logits kept in memory for this benchmark only), and
the top-k approximation the study stores (``k`` most probable dense tokens in half precision plus the tail
mass) for several ``k``. Reports each ``k``'s bytes per token, its Spearman rank correlation with the full KL
across the allocations, and its relative error.

Run: ``python bench/kl_reference.py`` (``--quick`` for a smoke run). Writes bench/results/kl_reference.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/kl_reference.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from allocator import (
    ConstraintSpace,
    SparseModel,
    calibrate,
    full_kl,
    kl_to_reference,
    load_model,
    load_text,
    make_token_sets,
)
from bench._common import RESULTS, results_name, write_results

KS = (8, 16, 32, 64, 128, 256)


@torch.no_grad()
def dense_log_probs(adapter: Any, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per sequence, the dense model's ``(T−1) x V`` log-probabilities (bfloat16, to fit in memory)."""
    out = []
    for row in tokens:
        hidden = adapter.body(input_ids=row[None], use_cache=False).last_hidden_state[0, :-1]
        out.append(F.log_softmax(adapter.head(hidden).float(), dim=-1).to(torch.bfloat16))
    return out


@torch.no_grad()
def kls(adapter: Any, tokens: torch.Tensor, dense: list[torch.Tensor], ks: tuple[int, ...]) -> dict[str, float]:
    """Mean per-token KL of the model as it is (sparsifiers installed) against the dense distributions: full,
    and top-k for each k."""
    totals = {"full": 0.0, **{str(k): 0.0 for k in ks}}
    count = 0
    for row, logp in zip(tokens, dense, strict=True):
        hidden = adapter.body(input_ids=row[None], use_cache=False).last_hidden_state[0, :-1]
        logits = adapter.head(hidden).float()
        logp = logp.float()
        totals["full"] += float(full_kl(logits, logp).sum())
        top = logp.topk(max(ks), dim=-1)
        for k in ks:
            values, indices = top.values[:, :k], top.indices[:, :k]
            tail = (1.0 - values.exp().sum(dim=-1)).clamp(min=1e-12).log()
            stored = values.to(torch.float16)  # what the study stores
            totals[str(k)] += float(kl_to_reference(logits, stored, indices.to(torch.int32), tail).sum())
        count += logp.shape[0]
    return {key: value / count for key, value in totals.items()}


def per_k_figures(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each ``k``'s storage cost and how well its KL agrees with the full KL over one set's allocations."""
    full = np.array([r["full"] for r in rows])
    out = []
    for k in KS:
        approx = np.array([r[str(k)] for r in rows])
        out.append(
            {
                "k": k,
                "bytes_per_token": k * (2 + 4) + 4,
                "spearman": float(spearmanr(full, approx).statistic),
                "relative_error_max": float(np.max(np.abs(approx - full) / full)),
                "relative_error_mean": float(np.mean((full - approx) / full)),
                "full_kl_range": [float(full.min()), float(full.max())],
            }
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--allocations", type=int, default=16)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    """Measure full and top-k KL over both sets of allocations; write kl_reference{,_quick}.{json,md}."""
    args = build_parser().parse_args()
    if args.quick:
        args.allocations, args.sequences = 4, 2
    loaded = load_model("smollm2-135m")
    adapter = loaded.adapter
    sets = make_token_sets(
        load_text("pydoc"), loaded.tokenizer, seq_len=256, counts={"calibration": 16, "search": args.sequences}
    )
    sparse_model = SparseModel(adapter, calibrate(adapter, sets.calibration))
    space = ConstraintSpace(weights=adapter.block_weights().tolist(), target=args.target, lower=0.0, upper=0.9)
    sets_of = _allocation_sets(space, args.allocations)
    dense = dense_log_probs(adapter, sets.search)
    result: dict = {"target": args.target, "tokens": int(sets.search[:, 1:].numel()), "sets": {}}
    for label, allocations in sets_of.items():
        rows = []
        for i, vector in enumerate(allocations):
            with sparse_model.applied(vector, rule="quantile"):
                rows.append(kls(adapter, sets.search, dense, KS))
            print(f"{label} {i}: full KL {rows[-1]['full']:.4f}, top-64 {rows[-1]['64']:.4f}", flush=True)
        result["sets"][label] = {"rows": rows, "per_k": per_k_figures(rows)}
    write_results(args.out, results_name("kl_reference", args.quick), result, _markdown(result, args))


def _allocation_sets(space: ConstraintSpace, count: int) -> dict[str, list[Any]]:
    """The uniform allocation with ``count - 1`` random feasible ones, and with as many small perturbations."""
    uniform = space.uniform_vector()
    noise = np.random.default_rng(0).normal(0.0, 0.04, (count - 1, space.dim))
    return {
        "random": [uniform, *space.sample(count - 1, seed=0)],
        "near uniform": [uniform, *space.project(uniform + noise)],
    }


def _markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The report: per set of allocations, each ``k``'s cost and agreement with the full KL."""
    lines = [
        "# The KL objective's top-k dense reference",
        "",
        f"`python bench/kl_reference.py{' --quick' if args.quick else ''}`: SmolLM2-135M, {args.allocations} "
        f"allocations per set at {args.target:.0%} (each at exactly its target sparsity), {result['tokens']:,} "
        "search tokens; Spearman rank correlation of the top-k KL with the full-vocabulary KL across a set.",
        "",
    ]
    for label, block in result["sets"].items():
        low, high = block["per_k"][0]["full_kl_range"]
        lines += [
            f"## {label} (full KL {low:.4f} to {high:.4f} nats per token)",
            "",
            "| k | bytes per token (fp16 log-probs + int32 ids + tail) | Spearman with full KL | mean shortfall "
            "| largest relative error |",
            "|---|---|---|---|---|",
            *[
                f"| {r['k']} | {r['bytes_per_token']} | {r['spearman']:.4f} | {r['relative_error_mean']:.2%} "
                f"| {r['relative_error_max']:.2%} |"
                for r in block["per_k"]
            ],
            "",
        ]
    lines += [
        "The top-k KL merges the tail into one outcome, so it is a lower bound of the full KL (the shortfall).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
