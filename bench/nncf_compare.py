"""One export applied two ways on SmolLM2-135M: by our loader (its thresholds) and by NNCF (its own calibration).

For two allocations at 50% (uniform, and one graded by depth), an export is built as ``study export``
builds one (thresholds calibrated under the sparse model on 64 x 256 calibration tokens, ``nncf.json``
beside ``lookup.json``). It is then applied (a) with :func:`allocator.load_lookup` and (b) with
:func:`allocator.integrations.nncf.sparsify`, NNCF's ``sparsify_activations`` calibrating on the same
calibration tokens. Reported side by side on 16 x 256 held-out tokens of other documents: model-level
measured sparsity, the largest per-site deviation from the export's sparsities, perplexity and KL to the
dense model.

Run: ``python bench/nncf_compare.py`` (needs the ``nncf`` extra; ``--quick`` for a smoke run). Writes
bench/results/nncf_compare.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/nncf_compare.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import torch

from allocator import (
    SITE_NAMES,
    SparseModel,
    build_lookup,
    calibrate,
    calibrate_allocation,
    compute_reference,
    evaluate_tokens,
    load_lookup,
    load_model,
    load_text,
    make_token_sets,
    write_lookup,
)
from allocator.integrations.nncf import evaluate as nncf_evaluate
from allocator.integrations.nncf import measured_site_sparsity, nncf_scope, sparsify, write_nncf_file
from bench._common import RESULTS, results_name, write_results


def export(loaded: Any, sparse_model: SparseModel, vector: torch.Tensor, tokens: torch.Tensor, out: Path) -> dict:
    """A lookup of ``vector`` as ``study export`` writes one (thresholds under the sparse model, nncf.json)."""
    calibration = calibrate_allocation(sparse_model, vector, tokens)
    sites = sparse_model.site_sparsities(vector)
    lookup = build_lookup(
        model=loaded.identity(),
        score=calibration.score,
        sparsify_fraction=1.0,
        split="uniform",
        target=float(sparse_model.model_sparsity(vector)),
        block_sparsities=vector,
        site_sparsities=sites,
        thresholds=calibration.thresholds(sites),
        site_weights=loaded.adapter.site_weights(),
        calibration={"tokens": int(tokens.numel())},
        study={"name": "nncf-compare"},
    )
    write_lookup(out, lookup, extra=lambda directory: write_nncf_file(directory, lookup))
    return lookup


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (its ``--help`` is the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    """Export two allocations, apply each both ways, compare; write nncf_compare{,_quick}.{json,md}."""
    args = build_parser().parse_args()
    calibration_sequences, heldout_sequences = (4, 2) if args.quick else (64, 16)
    dense_model = load_model("smollm2-135m")
    sets = make_token_sets(
        load_text("pydoc"),
        dense_model.tokenizer,
        seq_len=256,
        counts={"calibration": calibration_sequences, "heldout": heldout_sequences},
    )
    reference = compute_reference(dense_model.adapter, sets.heldout)
    sparse_model = SparseModel(dense_model.adapter, calibrate(dense_model.adapter, sets.calibration))
    n = dense_model.adapter.n_blocks
    allocations = {
        "uniform": torch.full((n,), args.target, dtype=torch.float64),
        "graded": torch.linspace(-0.1, 0.1, n, dtype=torch.float64) + args.target,
    }
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name, vector in allocations.items():
            lookup = export(dense_model, sparse_model, vector, sets.calibration, Path(directory) / name)
            rows += _applied_both_ways(dense_model, lookup, Path(directory) / name, sets, reference, name)
            print(rows[-2], rows[-1], flush=True)
    write_results(args.out, results_name("nncf_compare", args.quick), rows, _markdown(rows, sets, args))


def _applied_both_ways(
    dense_model: Any, lookup: dict, path: Path, sets: Any, reference: Any, name: str
) -> list[dict[str, Any]]:
    """The export at ``path`` applied by our loader and by NNCF, each measured on the held-out tokens."""
    n = dense_model.adapter.n_blocks
    expected = {
        nncf_scope("llama", b, site): block["sites"][site]["sparsity"]
        for b, block in enumerate(lookup["blocks"])
        for site in SITE_NAMES
    }
    ours_model = load_model("smollm2-135m")
    with load_lookup(ours_model.model, path) as sparsifiers:
        ours = evaluate_tokens(
            ours_model.adapter,
            sets.heldout,
            reference=reference,
            measured_sparsity=sparsifiers.measured_model_sparsity,
            measured_site_sparsity=sparsifiers.measured_site_sparsity,
        )
    site_ours = torch.tensor(ours.site_sparsity).reshape(-1)
    targets = torch.tensor([expected[nncf_scope("llama", b, s)] for b in range(n) for s in SITE_NAMES])
    nncf_model = load_model("smollm2-135m")
    sparse = sparsify(nncf_model.model, path, sets.calibration, batch_size=64)
    per_site = measured_site_sparsity(sparse, sets.heldout)
    nncf_eval = nncf_evaluate(sparse, sets.heldout, reference=reference)  # NNCF's hooks need its forward
    weights = dense_model.adapter.site_weights().reshape(-1)
    measured_nncf = sum(per_site[node] * float(w) for node, w in zip(expected, weights, strict=True))
    return [
        {
            "allocation": name,
            "applied_by": "sparsealloc (exported thresholds)",
            "measured": ours.measured_sparsity,
            "worst_site": float((site_ours - targets).abs().max()),
            "perplexity": ours.perplexity,
            "kl": ours.kl,
        },
        {
            "allocation": name,
            "applied_by": "NNCF sparsify_activations",
            "measured": measured_nncf / float(weights.sum()),
            "worst_site": max(abs(per_site[node] - expected[node]) for node in expected),
            "perplexity": nncf_eval.perplexity,
            "kl": nncf_eval.kl,
        },
    ]


def _markdown(rows: list[dict[str, Any]], sets: Any, args: argparse.Namespace) -> str:
    """The report: one row per allocation and way of applying it."""
    lines = [
        "# One export, applied by sparsealloc and by NNCF",
        "",
        f"`python bench/nncf_compare.py{' --quick' if args.quick else ''}`: SmolLM2-135M at {args.target:.0%}, "
        f"{sets.calibration.numel():,} calibration tokens (our thresholds, and NNCF's own calibration), "
        f"{sets.heldout.numel():,} held-out tokens of other documents.",
        "",
        "| allocation | applied by | measured sparsity | worst site (points) | held-out perplexity | KL |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['allocation']} | {r['applied_by']} | {r['measured']:.4f} | {100 * r['worst_site']:.1f} | "
            f"{r['perplexity']:.3f} | {r['kl']:.4f} |"
            for r in rows
        ],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
