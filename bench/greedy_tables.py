"""Greedy split tables on SmolLM2-135M: build time against one dense calibration pass, and what they buy.

For each greedy step size, in one run: the table build time / the dense calibration pass time (goal: under
10x), and held-out perplexity of greedy-uniform (TEAL's method) against uniform at 40/50/60%.

Run: ``python bench/greedy_tables.py`` (``--quick`` for a smoke run). Writes bench/results/greedy_tables.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/greedy_tables.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import torch

from allocator import (
    GreedySplit,
    Objective,
    SparseModel,
    build_greedy_table,
    calibrate,
    load_model,
    load_text,
    make_token_sets,
)
from bench._common import RESULTS, machine, results_name, write_results
from bench._timing import dense_body_seconds


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=float, nargs="+", default=[0.05, 0.025])
    parser.add_argument("--greedy-sequences", type=int, default=1)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    """Build a table per step size, time it, compare the splits; write greedy_tables{,_quick}.{json,md}."""
    args = build_parser().parse_args()
    if args.quick:
        args.steps, args.sequences, args.seq_len, args.levels = [0.1], 4, 128, [0.5]

    loaded = load_model("smollm2-135m")
    split = make_token_sets(
        load_text("pydoc"),
        loaded.tokenizer,
        seq_len=args.seq_len,
        counts={"calibration": args.sequences, "heldout": args.sequences},
    )
    adapter = loaded.adapter
    dense_body_seconds(adapter, split.calibration[:2], 2)  # warm-up
    calibration = calibrate(adapter, split.calibration)
    dense = dense_body_seconds(adapter, split.calibration, 8)
    print(f"calibration pass {calibration.seconds:.1f} s, dense body pass {dense:.1f} s")
    uniform = Objective(SparseModel(adapter, calibration))
    # At exactly each level's sparsity on the held-out text (the quantile rule), so splits compare fairly.
    uniform_heldout = {level: uniform.evaluate(level, split.heldout).perplexity for level in args.levels}
    rows = [_step_row(adapter, calibration, split, step, dense, uniform_heldout, args) for step in args.steps]
    result = {
        "benchmark": "greedy_tables",
        "model": "smollm2-135m",
        "calibration_tokens": int(split.calibration.numel()),
        "greedy_tokens": int(split.calibration[: args.greedy_sequences].numel()),
        "calibration_seconds": calibration.seconds,
        "dense_body_seconds": dense,
        **machine("torch_threads", "cpus"),
        "steps": rows,
    }
    write_results(args.out, results_name("greedy_tables", args.quick), result, _markdown(result))


def _step_row(
    adapter: Any,
    calibration: Any,
    split: Any,
    step: float,
    dense: float,
    uniform_heldout: dict[float, float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Build the table of one step size, time it, and read held-out perplexity of its split at every level."""
    table = build_greedy_table(
        adapter, calibration, split.calibration[: args.greedy_sequences], step=step, max_sparsity=0.9
    )
    seconds = table.settings["seconds"]
    greedy = Objective(SparseModel(adapter, calibration, split=GreedySplit(table)))
    levels = []
    for level in args.levels:
        heldout = greedy.evaluate(level, split.heldout).perplexity
        levels.append({"sparsity": level, "greedy_heldout": heldout, "uniform_heldout": uniform_heldout[level]})
        print(f"step {step}: {level:.2f} greedy {heldout:.3f} vs uniform {uniform_heldout[level]:.3f}")
    print(f"step {step}: {seconds:.1f} s = {seconds / calibration.seconds:.2f}x the calibration pass")
    return {
        "step": step,
        "rows_per_block": len(table.effective[0]),
        "build_seconds": seconds,
        "over_calibration_pass": seconds / calibration.seconds,
        "over_dense_body_pass": seconds / dense,
        "levels": levels,
    }


def _markdown(result: dict[str, Any]) -> str:
    """The report: build time per step size against its goal, then held-out perplexity of the two splits."""
    rows = result["steps"]
    lines = [
        "# Greedy split tables on SmolLM2-135M",
        "",
        f"`python bench/greedy_tables.py`: calibration on {result['calibration_tokens']:,} tokens "
        f"({result['calibration_seconds']:.1f} s; dense body pass {result['dense_body_seconds']:.1f} s); greedy "
        f"tables scored on {result['greedy_tokens']:,} tokens, up to block sparsity 0.9; "
        f"{torch.get_num_threads()} threads.",
        "",
        "| step | rows/block | build s | / calibration pass | goal |",
        "|---|---|---|---|---|",
        *[
            f"| {r['step']} | {r['rows_per_block']} | {r['build_seconds']:.1f} "
            f"| {r['over_calibration_pass']:.2f} | < 10 |"
            for r in rows
        ],
        "",
        "Held-out perplexity, uniform sparsity in every block, greedy split vs uniform split:",
        "",
        "| step | sparsity | greedy split | uniform split |",
        "|---|---|---|---|",
        *[
            f"| {r['step']} | {lv['sparsity']:.2f} | {lv['greedy_heldout']:.3f} | {lv['uniform_heldout']:.3f} |"
            for r in rows
            for lv in r["levels"]
        ],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
