"""Setup speed on SmolLM2-135M: the greedy split tables against TEAL's way of computing them and a dense pass.

Two measurements, each in one run (ratios, not absolute times, are what compares across machines):

* **TEAL's protocol** (``teal/greedyopt.py``): block inputs of ``--teal-sequences`` x ``--teal-seq-len``
  tokens (TEAL: 10 x 2048), TEAL's step rule (a site rises by 0.05 / its weight relative to q), the error
  the L2 norm over the last quarter of the positions. On ``--ratio-blocks``, the path up to
  ``--ratio-max-sparsity`` is built twice: one whole-block forward per candidate (``naive``, as TEAL does)
  and ``fast``; the tables must be the same, and the ratio is the goal (>= 20x). The whole model's time at
  the reference protocol (to 0.9) is extrapolated from the fast path's seconds per step (goal <= 30 min).
* **Passes**: threshold calibration under the sparse model (an allocation graded 0.4-0.7 over depth) in one
  pass and per group, over one dense body pass on the same 64 x 256 calibration tokens (goal <= 1.5x); the
  dense reference (top-64 log-probabilities) over one dense forward with logits on the same tokens (<= 1.3x).
* **The default settings** (a study's: step 0.025, ``--default-sequences`` x 256 tokens, mean squared error
  on every position, every block to 0.9): today's stacked evaluation and the fast one, each over one dense
  body pass on the same tokens (goal <= 50x).

Run: ``python bench/setup_speed.py`` (``--quick`` for a smoke run). Writes bench/results/setup_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/setup_speed.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import torch

from allocator import (
    SparseModel,
    build_greedy_table,
    calibrate,
    calibrate_allocation,
    compute_reference,
    load_model,
    load_text,
    make_token_sets,
)
from allocator.sparsity import teal_step
from bench._common import RESULTS, machine, results_name, write_results
from bench._timing import dense_body_seconds

TEAL_ERROR = {"error_positions": 0.25, "error_norm": "l2"}


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--teal-sequences", type=int, default=10)
    parser.add_argument("--teal-seq-len", type=int, default=2048)
    parser.add_argument("--ratio-blocks", type=int, nargs="+", default=[0])
    parser.add_argument("--ratio-max-sparsity", type=float, default=0.05)
    parser.add_argument("--default-sequences", type=int, default=4)
    parser.add_argument("--pass-sequences", type=int, default=64)
    parser.add_argument("--skip-default", action="store_true", help="Measure TEAL's protocol only.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def _timed_table(adapter: Any, calibration: Any, tokens: torch.Tensor, **settings: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    table = build_greedy_table(adapter, calibration, tokens, **settings)
    return time.perf_counter() - started, table


def _same(one: Any, other: Any) -> bool:
    return all(
        torch.equal(a, b) and torch.allclose(e, f, rtol=1e-4, atol=1e-9)
        for a, b, e, f in zip(one.sites, other.sites, one.error, other.error, strict=True)
    )


def _teal(loaded: Any, args: argparse.Namespace) -> dict[str, Any]:
    """TEAL's protocol: naive against fast on a path prefix, and the whole model extrapolated."""
    split = make_token_sets(
        load_text("pydoc"), loaded.tokenizer, seq_len=args.teal_seq_len, counts={"calibration": args.teal_sequences}
    )
    tokens = split.calibration
    calibration = calibrate(loaded.adapter, tokens)
    dense = dense_body_seconds(loaded.adapter, tokens, batch_size=1)
    step = teal_step(loaded.adapter.site_weights()[0])
    common = {"step": step, "max_sparsity": args.ratio_max_sparsity, "blocks": args.ratio_blocks, **TEAL_ERROR}
    seconds, tables = {}, {}
    for method in ("naive", "fast"):
        seconds[method], tables[method] = _timed_table(loaded.adapter, calibration, tokens, method=method, **common)
        print(f"TEAL protocol, {method}: {seconds[method]:.1f} s", flush=True)
    steps = sum(len(rows) - 1 for rows in tables["fast"].effective)
    steps_to_09 = round(0.9 / step)  # rows per block to 0.9 at TEAL's step
    whole = seconds["fast"] / steps * steps_to_09 * loaded.adapter.n_blocks
    return {
        "tokens": int(tokens.numel()),
        "step": step,
        "blocks": args.ratio_blocks,
        "prefix_max_sparsity": args.ratio_max_sparsity,
        "prefix_steps": steps,
        "dense_body_seconds": dense,
        "naive_seconds": seconds["naive"],
        "fast_seconds": seconds["fast"],
        "same_tables": _same(tables["naive"], tables["fast"]),
        "speedup": seconds["naive"] / seconds["fast"],
        "whole_model_minutes_extrapolated": whole / 60,
        "whole_model_over_dense_pass": whole / dense,
    }


@torch.no_grad()
def _forward_seconds(adapter: Any, tokens: torch.Tensor, batch_size: int = 8, head_chunk: int = 1024) -> float:
    """One dense forward with logits (body, then the head in chunks, as the reference runs it)."""
    started = time.perf_counter()
    for start in range(0, tokens.shape[0], batch_size):
        hidden = adapter.body(input_ids=tokens[start : start + batch_size], use_cache=False).last_hidden_state
        flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        for offset in range(0, flat.shape[0], head_chunk):
            adapter.head(flat[offset : offset + head_chunk])
    return time.perf_counter() - started


def _passes(loaded: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Sparse-model calibration and the dense reference, each over the dense pass it is measured against."""
    split = make_token_sets(
        load_text("pydoc"), loaded.tokenizer, seq_len=256, counts={"calibration": args.pass_sequences}
    )
    tokens = split.calibration
    sparse_model = SparseModel(loaded.adapter, calibrate(loaded.adapter, tokens))
    allocation = torch.linspace(0.4, 0.7, loaded.adapter.n_blocks, dtype=torch.float64)
    seconds = {"body": dense_body_seconds(loaded.adapter, tokens)}
    for method in ("one_pass", "per_group"):
        started = time.perf_counter()
        calibrate_allocation(sparse_model, allocation, tokens, method=method)
        seconds[method] = time.perf_counter() - started
    seconds["forward"] = _forward_seconds(loaded.adapter, tokens)
    seconds["reference"] = compute_reference(loaded.adapter, tokens).seconds
    print(f"passes: {seconds}", flush=True)
    return {
        "tokens": int(tokens.numel()),
        "seconds": seconds,
        "calibration_one_pass_over_body": seconds["one_pass"] / seconds["body"],
        "calibration_per_group_over_body": seconds["per_group"] / seconds["body"],
        "reference_over_forward": seconds["reference"] / seconds["forward"],
    }


def _default(loaded: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A default study's tables: stacked (before) and fast, each over one dense body pass on the same tokens."""
    split = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=256, counts={"calibration": 64})
    calibration = calibrate(loaded.adapter, split.calibration)
    tokens = split.calibration[: args.default_sequences]
    dense = dense_body_seconds(loaded.adapter, tokens)
    seconds, tables = {}, {}
    for method in ("stacked", "fast"):
        seconds[method], tables[method] = _timed_table(
            loaded.adapter, calibration, tokens, step=0.025, max_sparsity=0.9, method=method
        )
        print(f"default settings, {method}: {seconds[method]:.1f} s", flush=True)
    return {
        "tokens": int(tokens.numel()),
        "dense_body_seconds": dense,
        "stacked_seconds": seconds["stacked"],
        "fast_seconds": seconds["fast"],
        "same_tables": _same(tables["stacked"], tables["fast"]),
        "stacked_over_dense_pass": seconds["stacked"] / dense,
        "fast_over_dense_pass": seconds["fast"] / dense,
    }


def _goal(met: bool) -> str:
    return "yes" if met else "**no**"


def _markdown(result: dict[str, Any]) -> str:
    """The report: each figure beside its goal."""
    teal, passes = result["teal"], result["passes"]
    lines = [
        "# Setup speed on SmolLM2-135M: greedy split tables, sparse-model calibration, dense reference",
        "",
        "`python bench/setup_speed.py`; " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()) + ".",
        "",
        f"TEAL's protocol: {teal['tokens']:,} tokens, step {teal['step']:.5f} (0.05 / site weight relative to q), "
        f"L2 error over the last quarter; block(s) {teal['blocks']}, path to {teal['prefix_max_sparsity']} "
        f"({teal['prefix_steps']} steps); dense body pass {teal['dense_body_seconds']:.1f} s. Same tables: "
        f"{teal['same_tables']}.",
        "",
        "| figure | value | goal | met |",
        "|---|---|---|---|",
        f"| TEAL protocol: naive s / fast s | {teal['naive_seconds']:.1f} / {teal['fast_seconds']:.1f} = "
        f"{teal['speedup']:.1f}x | >= 20x | {_goal(teal['speedup'] >= 20)} |",
        f"| TEAL protocol, whole model to 0.9 (extrapolated from the fast steps) | "
        f"{teal['whole_model_minutes_extrapolated']:.0f} min = {teal['whole_model_over_dense_pass']:.0f}x a dense "
        f"pass | <= 30 min | {_goal(teal['whole_model_minutes_extrapolated'] <= 30)} |",
    ]
    lines += [
        f"| sparse-model calibration, one pass ({passes['tokens']:,} tokens) | "
        f"{passes['calibration_one_pass_over_body']:.2f}x a dense body pass (per group: "
        f"{passes['calibration_per_group_over_body']:.2f}x) | <= 1.5x | "
        f"{_goal(passes['calibration_one_pass_over_body'] <= 1.5)} |",
        f"| dense reference (top 64) | {passes['reference_over_forward']:.2f}x a dense forward with logits | <= 1.3x | "
        f"{_goal(passes['reference_over_forward'] <= 1.3)} |",
    ]
    default = result.get("default")
    if default is not None:
        lines += [
            f"| default settings ({default['tokens']:,} tokens, step 0.025, to 0.9): stacked (before) | "
            f"{default['stacked_seconds']:.1f} s = {default['stacked_over_dense_pass']:.0f}x a dense pass | "
            f"<= 50x | {_goal(default['stacked_over_dense_pass'] <= 50)} |",
            f"| default settings: fast | {default['fast_seconds']:.1f} s = {default['fast_over_dense_pass']:.0f}x "
            f"a dense pass (same tables: {default['same_tables']}) | <= 50x | "
            f"{_goal(default['fast_over_dense_pass'] <= 50)} |",
        ]
    lines += [
        "",
        "Deviations from TEAL's reference: the tokens are the pydoc corpus (TEAL: Alpaca); the naive path is "
        "TEAL's computation (one whole-block forward per candidate) in this code base, not TEAL's script; the "
        "whole-model figure is extrapolated from the prefix's seconds per step (later steps cost the same "
        "operations; the whole path was not run).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Measure the passes, TEAL's protocol and the default settings; write setup_speed{,_quick}.{json,md}."""
    args = build_parser().parse_args()
    if args.quick:
        args.teal_sequences, args.teal_seq_len, args.ratio_max_sparsity, args.default_sequences = 1, 256, 0.02, 1
        args.pass_sequences = 8
    torch.manual_seed(0)
    loaded = load_model("smollm2-135m")
    result: dict[str, Any] = {"machine": machine("platform", "cpus", "torch_threads", "torch")}
    result["passes"] = _passes(loaded, args)
    result["teal"] = _teal(loaded, args)
    if not args.skip_default:
        result["default"] = _default(loaded, args)
    write_results(args.out, results_name("setup_speed", args.quick), result, _markdown(result))


if __name__ == "__main__":
    main()
