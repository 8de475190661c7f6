"""End-to-end checks on the embedded SmolLM2-135M (converted from its GGUF once, then cached)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from allocator import load_model

SPARSEALLOC = str(Path(sys.executable).with_name("sparsealloc"))  # the venv's script, PATH or not

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")  # converts the GGUF on a fresh machine, then loads from the cache


def test_embedded_model_is_a_30_block_llama_with_gqa(smollm2):
    assert smollm2.architecture == "llama" and smollm2.adapter.n_blocks == 30
    weights = smollm2.adapter.site_weights()[0].tolist()
    assert weights == [576 * 576, 192 * 576, 192 * 576, 576 * 576, 1536 * 576, 1536 * 576, 576 * 1536]


def test_cached_model_loads_in_under_ten_seconds(smollm2):
    started = time.perf_counter()
    again = load_model("smollm2-135m")
    assert time.perf_counter() - started < 10.0
    assert again.fingerprint == smollm2.fingerprint
    ids = again.tokenizer("def f(x):\n    return x + 1\n", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = again.model(ids, labels=ids).loss.item()
    assert loss < 5.0  # a real language model, not random weights (uniform would be log(49152) = 10.8)


def test_evaluate_command_on_the_embedded_defaults():
    result = subprocess.run(
        [SPARSEALLOC, "evaluate", "--model", "smollm2-135m", "--data", "pydoc", "--sparsity", "0.5",
         "--seq-len", "128", "--calibration-sequences", "4", "--heldout-sequences", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m (llama, 30 blocks" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "sparse thresholds" in line)
    measured = float(line.split("measured sparsity ")[1].split(",")[0])
    assert abs(measured - 0.5) < 0.01, line  # thresholds calibrated under the sparse model meet the target


def test_measured_sparsity_meets_the_target_on_unseen_documents(smollm2):
    """Thresholds calibrated under the sparse model on the calibration role's 64 x 256 tokens hold on a
    search pool of other documents: model-level sparsity within half a point of the target, every site
    within one point."""
    from allocator import SparseModel, calibrate, calibrate_allocation, evaluate_tokens, load_text, make_token_sets

    sets = make_token_sets(
        load_text("pydoc"), smollm2.tokenizer, seq_len=256, counts={"calibration": 64, "search": 64}, seed=0
    )
    sparse_model = SparseModel(smollm2.adapter, calibrate(smollm2.adapter, sets.calibration))
    vector = torch.linspace(0.45, 0.75, 30, dtype=torch.float64)  # deeper blocks sparser
    calibration = calibrate_allocation(sparse_model, vector, sets.calibration)
    thresholds = calibration.thresholds(sparse_model.site_sparsities(vector))
    with sparse_model.applied(vector, thresholds=thresholds):
        evaluation = evaluate_tokens(
            smollm2.adapter,
            sets.search,
            measured_sparsity=sparse_model.measured_sparsity,
            measured_site_sparsity=sparse_model.sparsifiers.measured_site_sparsity,
        )
    target = sparse_model.site_sparsities(vector)
    assert abs(evaluation.measured_sparsity - sparse_model.model_sparsity(vector)) <= 0.005
    assert float((torch.tensor(evaluation.site_sparsity) - target).abs().max()) <= 0.01


def test_a_bfloat16_study_on_the_cpu_runs_end_to_end(tmp_path):
    """`model: {device: cpu, dtype: bfloat16}`: create, run, export, apply, all in bfloat16."""
    import yaml

    config = {
        "name": "bf16",
        "model": {"source": "smollm2-135m", "device": "cpu", "dtype": "bfloat16"},
        "data": {
            "seq_len": 64,
            "calibration_sequences": 4,
            "search_sequences": 4,
            "validation_sequences": 2,
            "heldout_sequences": 2,
        },
        "sparsity": {"target": 0.5},
        "sampler": {"name": "random"},
        "search": {"screen_sequences": 2, "promote_sequences": [2]},
        "trials": 2,
        "evaluation": {"heldout": "none"},
    }
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(config))
    url = f"sqlite:///{tmp_path / 'db.db'}"
    for args in (
        ["study", "create", str(tmp_path / "bf16.yaml")],
        ["study", "run", "bf16"],
        ["study", "export", "bf16", "--out", str(tmp_path / "lookup")],
    ):
        result = subprocess.run([SPARSEALLOC, *args, "--storage", url], capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stderr
    applied = subprocess.run(
        [SPARSEALLOC, "apply", "--lookup", str(tmp_path / "lookup"), "--sequences", "2", "--seq-len", "64",
         "--device", "cpu", "--dtype", "bfloat16"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    measured = float(applied.stdout.split("measured ")[1].split()[0])
    assert abs(measured - 0.5) < 0.05


def test_the_one_time_conversion_reports_progress_and_the_cached_load_does_not(tmp_path):
    calls: list[tuple[str, int]] = []
    advanced: list[int] = []

    def bar(label: str, total: int):
        calls.append((label, total))
        return advanced.append

    first = load_model("smollm2-135m", cache_dir=tmp_path, progress=bar)
    ((label, total),) = calls
    assert label.startswith("Converting ") and label.endswith(".gguf to safetensors (once)") and total == 1
    assert advanced == [1]  # finished: in a log, a line when it started and one when it ended
    again = load_model("smollm2-135m", cache_dir=tmp_path, progress=bar)
    assert len(calls) == 1 and again.fingerprint == first.fingerprint
