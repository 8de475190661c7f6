"""Evaluation and calibration speed on the embedded SmolLM2-135M, and held-out perplexity at uniform sparsity.

Reports, measured in one run on the same tokens (median of --repeats interleaved repetitions):
- sparse evaluation time / dense evaluation time (goal <= 1.10): the cost of the hooks;
- calibration time / one dense pass (goal <= 1.5), against both the dense evaluation pass (body + LM head)
  and the dense body-only pass (what calibration itself runs, the stricter denominator);
- held-out perplexity at uniform 0/25/40/50/60/70% and the measured sparsity.

Run: ``python bench/eval_speed.py`` (``--quick`` for a smoke run). Writes bench/results/eval_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/eval_speed.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import torch

from allocator import (
    Objective,
    Score,
    SparseModel,
    batch_nll,
    calibrate,
    load_model,
    load_text,
    make_token_sets,
)
from bench._common import RESULTS, machine, results_name, write_results
from bench._timing import dense_body_seconds

LEVELS = (0.0, 0.25, 0.40, 0.50, 0.60, 0.70)


@torch.no_grad()
def dense_eval_seconds(adapter: Any, tokens: torch.Tensor, batch_size: int) -> float:
    """One dense perplexity pass (body + chunked head) with no hooks installed at all."""
    started = time.perf_counter()
    for start in range(0, tokens.shape[0], batch_size):
        batch_nll(adapter, tokens[start : start + batch_size])
    return time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Few tokens, one repeat: a smoke run.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=16, help="Calibration and held-out sequences each.")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    """Time the passes, measure held-out perplexity at uniform sparsity; write eval_speed{,_quick}.{json,md}."""
    args = build_parser().parse_args()
    if args.quick:
        args.repeats, args.sequences, args.seq_len = 1, 4, 128

    loaded = load_model("smollm2-135m")
    split = make_token_sets(
        load_text("pydoc"),
        loaded.tokenizer,
        seq_len=args.seq_len,
        counts={"calibration": args.sequences, "heldout": args.sequences},
    )
    adapter, tokens = loaded.adapter, split.calibration
    print(f"SmolLM2-135M: {tokens.numel():,} calibration tokens, batch {args.batch_size}")
    dense_body_seconds(adapter, tokens[: args.batch_size], args.batch_size)  # warm-up
    rows, calibration = _timed_repeats(loaded, tokens, args)
    median = {key: statistics.median(values) for key, values in rows.items()}
    ratios = {
        "sparse_eval_over_dense_eval": median["sparse_eval"] / median["dense_eval"],
        "calibration_over_dense_eval": median["calibration"] / median["dense_eval"],
        "calibration_over_dense_body": median["calibration"] / median["dense_body"],
        "weight_aware_calibration_over_dense_body": median["calibration_weight_aware"] / median["dense_body"],
    }
    heldout = _heldout_uniform(Objective(SparseModel(adapter, calibration), batch_size=args.batch_size), split)
    result = {
        "benchmark": "eval_speed",
        "model": "smollm2-135m",
        "data": split.describe(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "machine": machine("cpus", "torch_threads", "torch", "platform"),
        "seconds": rows,
        "median_seconds": median,
        "ratios": ratios,
        "heldout_uniform": heldout,
    }
    markdown = _markdown(result, int(tokens.numel()), split.heldout.shape[0], args)
    write_results(args.out, results_name("eval_speed", args.quick), result, markdown)


def _timed_repeats(loaded: Any, tokens: torch.Tensor, args: argparse.Namespace) -> tuple[dict[str, list[float]], Any]:
    """Seconds of each pass, repeat by repeat (interleaved, so a change of machine load touches them all), and
    the last magnitude calibration."""
    adapter = loaded.adapter
    rows: dict[str, list[float]] = {
        key: [] for key in ("dense_eval", "dense_body", "sparse_eval", "calibration", "calibration_weight_aware")
    }
    calibration = None
    for repeat in range(args.repeats):
        rows["dense_eval"].append(dense_eval_seconds(adapter, tokens, args.batch_size))
        rows["dense_body"].append(dense_body_seconds(adapter, tokens, args.batch_size))
        calibration = calibrate(adapter, tokens, batch_size=args.batch_size, model_fingerprint=loaded.fingerprint)
        rows["calibration"].append(calibration.seconds)
        weight_aware = calibrate(adapter, tokens, score=Score("weight_aware"), batch_size=args.batch_size)
        rows["calibration_weight_aware"].append(weight_aware.seconds)
        objective = Objective(SparseModel(adapter, calibration), batch_size=args.batch_size)
        rows["sparse_eval"].append(objective.evaluate(0.5, tokens, rule="threshold").seconds)
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()))
    assert calibration is not None
    return rows, calibration


def _heldout_uniform(objective: Objective, split: Any) -> list[dict[str, float]]:
    """Held-out perplexity and measured sparsity at each uniform level."""
    heldout = []
    for level in LEVELS:
        evaluation = objective.evaluate(level, split.heldout, rule="threshold")
        heldout.append(
            {"sparsity": level, "perplexity": evaluation.perplexity, "measured_sparsity": evaluation.measured_sparsity}
        )
        print(f"held-out @ {level:.2f}: ppl {evaluation.perplexity:.3f}, measured {evaluation.measured_sparsity:.4f}")
    return heldout


def _markdown(result: dict[str, Any], n_tokens: int, n_heldout: int, args: argparse.Namespace) -> str:
    """The report: the ratios against their goals, then held-out perplexity at uniform sparsity."""
    median, ratios = result["median_seconds"], result["ratios"]
    table = [
        ("dense evaluation pass (body + LM head, no hooks)", "dense_eval", "1.000", ""),
        ("sparse evaluation at uniform 50%", "sparse_eval", f"{ratios['sparse_eval_over_dense_eval']:.3f}", "<= 1.10"),
        ("dense body-only pass", "dense_body", "1.000", ""),
        (
            "calibration (magnitude) / dense evaluation pass",
            "calibration",
            f"{ratios['calibration_over_dense_eval']:.3f}",
            "<= 1.5",
        ),
        (
            "calibration (magnitude) / dense body-only pass",
            "calibration",
            f"{ratios['calibration_over_dense_body']:.3f}",
            "<= 1.5",
        ),
        (
            "calibration (weight_aware, L1) / dense body-only pass",
            "calibration_weight_aware",
            f"{ratios['weight_aware_calibration_over_dense_body']:.3f}",
            "",
        ),
    ]
    lines = [
        "# Evaluation speed on SmolLM2-135M",
        "",
        f"`python bench/eval_speed.py` — {n_tokens:,} calibration tokens ({args.sequences} x {args.seq_len}), "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved repeats.",
        "",
        "| measure | median s | ratio | goal |",
        "|---|---|---|---|",
        *[f"| {label} | {median[key]:.2f} | {ratio} | {goal} |" for label, key, ratio, goal in table],
        "",
        f"Held-out perplexity ({n_heldout} x {args.seq_len} tokens, topics disjoint from calibration):",
        "",
        "| uniform sparsity | held-out ppl | measured sparsity |",
        "|---|---|---|",
        *[
            f"| {row['sparsity']:.2f} | {row['perplexity']:.3f} | {row['measured_sparsity']:.4f} |"
            for row in result["heldout_uniform"]
        ],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
