"""GPU check, for a machine with a CUDA GPU: agreement with the CPU, speed in bfloat16, one study's wall time.

1. SmolLM2-135M on CUDA in float32 against the CPU in float32, on the same 8 x 256 tokens: dense perplexity
   (relative difference; the goal is within 1e-4) and KL of a uniform 50% allocation.
2. Evaluation and calibration time on the GPU in bfloat16 against the CPU in float32 (same tokens).
3. One 50-trial `bo` study (KL objective, screens and promotions) on the GPU in bfloat16: wall time.

Run: ``python bench/gpu_check.py`` on a machine with a GPU (``--quick`` for a smoke run); refuses to run
without one. Writes bench/results/gpu_check.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/gpu_check.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))

import torch

from allocator import Objective, SparseModel, calibrate, compute_reference, load_model, load_text, make_token_sets
from bench._common import RESULTS, results_name, write_results
from storage import Database
from studies import build_config, create_study, open_session, run_study


def _timed(function):
    """``function()`` and its seconds (after the GPU has finished its queued work)."""
    started = time.perf_counter()
    value = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - started


def evaluate_on(device: str, dtype: str, tokens: torch.Tensor, calibration_tokens: torch.Tensor) -> dict:
    """Dense perplexity, KL at uniform 50% and the seconds of each step, with the model on ``device`` in ``dtype``."""
    loaded = load_model("smollm2-135m", device=device, dtype=dtype)
    calibration, calibration_seconds = _timed(lambda: calibrate(loaded.adapter, calibration_tokens))
    objective = Objective(SparseModel(loaded.adapter, calibration))
    reference = compute_reference(loaded.adapter, tokens)
    dense, dense_seconds = _timed(lambda: objective.evaluate(0.0, tokens, reference=reference, rule="threshold"))
    sparse, sparse_seconds = _timed(lambda: objective.evaluate(0.5, tokens, reference=reference))
    return {
        "device": device,
        "dtype": dtype,
        "dense_perplexity": dense.perplexity,
        "sparse_kl": sparse.kl,
        "sparse_measured": sparse.measured_sparsity,
        "calibration_seconds": calibration_seconds,
        "dense_seconds": dense_seconds,
        "sparse_seconds": sparse_seconds,
    }


def study_wall_time(trials: int) -> float:
    """Seconds of one ``trials``-trial ``bo`` study on the GPU in bfloat16 (in a throwaway database)."""
    with tempfile.TemporaryDirectory() as directory:
        database = Database(f"sqlite:///{directory}/gpu.db")
        config = build_config(
            "gpu-bo-50",
            target=0.5,
            model={"source": "smollm2-135m", "device": "cuda", "dtype": "bfloat16"},
            sampler="bo",
            trials=trials,
            evaluation={"heldout": "none"},
        )
        create_study(database, config)
        started = time.perf_counter()
        run_study(open_session(database, config))
        return time.perf_counter() - started


def main() -> None:
    """Compare the GPU with the CPU and time a study on it; write gpu_check{,_quick}.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_check.py needs a CUDA GPU; this machine has none.")
    sequences, trials = (2, 4) if args.quick else (8, args.trials)
    loaded = load_model("smollm2-135m")
    sets = make_token_sets(
        load_text("pydoc"), loaded.tokenizer, seq_len=256, counts={"calibration": 16, "search": sequences}
    )
    cpu = evaluate_on("cpu", "float32", sets.search, sets.calibration)
    gpu32 = evaluate_on("cuda", "float32", sets.search, sets.calibration)
    gpu16 = evaluate_on("cuda", "bfloat16", sets.search, sets.calibration)
    result = {
        "gpu": torch.cuda.get_device_name(0),
        "cpu_float32": cpu,
        "cuda_float32": gpu32,
        "cuda_bfloat16": gpu16,
        "perplexity_relative_difference": abs(gpu32["dense_perplexity"] - cpu["dense_perplexity"])
        / cpu["dense_perplexity"],
        "study_trials": trials,
        "study_wall_seconds": study_wall_time(trials),
    }
    write_results(args.out, results_name("gpu_check", args.quick), result, _markdown(result))


def _markdown(result: dict[str, Any]) -> str:
    """The report: agreement with the CPU, the three runs' figures and seconds, the study's wall time."""
    cpu, gpu32, gpu16, trials = (
        result["cpu_float32"],
        result["cuda_float32"],
        result["cuda_bfloat16"],
        result["study_trials"],
    )
    lines = [
        f"# GPU check ({result['gpu']})",
        "",
        f"Dense perplexity, CUDA float32 vs CPU float32: relative difference "
        f"{result['perplexity_relative_difference']:.2e} (goal 1e-4).",
        "",
        "| run | dense ppl | KL at 50% | measured | calibration s | dense eval s | sparse eval s |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {r['dense_perplexity']:.4f} | {r['sparse_kl']:.4f} | {r['sparse_measured']:.4f} | "
            f"{r['calibration_seconds']:.2f} | {r['dense_seconds']:.2f} | {r['sparse_seconds']:.2f} |"
            for name, r in (("CPU float32", cpu), ("CUDA float32", gpu32), ("CUDA bfloat16", gpu16))
        ],
        "",
        f"One {trials}-trial `bo` study on CUDA in bfloat16: {result['study_wall_seconds']:.0f} s wall.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
