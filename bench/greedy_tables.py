"""Greedy split tables on SmolLM2-135M: build time against one dense calibration pass, and what they buy.

For each greedy step size, in one run: the table build time / the dense calibration pass time (goal: under
10x), and held-out perplexity of greedy-uniform (TEAL's method) against uniform at 40/50/60%.

Run: ``python bench/greedy_tables.py`` (``--quick`` for a smoke run). Writes bench/results/greedy_tables.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from eval_speed import dense_body_seconds  # bench/ is on sys.path when a script in it runs

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

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=float, nargs="+", default=[0.05, 0.025])
    parser.add_argument("--greedy-sequences", type=int, default=1)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
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
    rows = []
    # At exactly each level's sparsity on the held-out text (the quantile rule), so splits compare fairly.
    uniform_heldout = {level: uniform.evaluate(level, split.heldout).perplexity for level in args.levels}
    for step in args.steps:
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
        rows.append(
            {
                "step": step,
                "rows_per_block": len(table.effective[0]),
                "build_seconds": seconds,
                "over_calibration_pass": seconds / calibration.seconds,
                "over_dense_body_pass": seconds / dense,
                "levels": levels,
            }
        )
        print(f"step {step}: {seconds:.1f} s = {seconds / calibration.seconds:.2f}x the calibration pass")
    result = {
        "benchmark": "greedy_tables",
        "model": "smollm2-135m",
        "calibration_tokens": int(split.calibration.numel()),
        "greedy_tokens": int(split.calibration[: args.greedy_sequences].numel()),
        "calibration_seconds": calibration.seconds,
        "dense_body_seconds": dense,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "steps": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"greedy_tables{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Greedy split tables on SmolLM2-135M",
        "",
        f"`python bench/greedy_tables.py`: calibration on {result['calibration_tokens']:,} tokens "
        f"({calibration.seconds:.1f} s; dense body pass {dense:.1f} s); greedy tables scored on "
        f"{result['greedy_tokens']:,} tokens, up to block sparsity 0.9; {torch.get_num_threads()} threads.",
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
    (args.out / f"greedy_tables{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
