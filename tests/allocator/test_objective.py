from __future__ import annotations

import math

import pytest
import torch

from allocator import (
    InputError,
    PerplexityObjective,
    SparseModel,
    batch_nll,
    calibrate,
    load_model,
    load_text,
    tokenize_split,
)


@pytest.fixture(scope="module")
def objective(trained_tiny_dir):
    loaded = load_model(trained_tiny_dir)
    split = tokenize_split(load_text("pydoc"), loaded.tokenizer, seq_len=64, n_calibration=8, n_heldout=8)
    calibration = calibrate(loaded.adapter, split.calibration)
    return PerplexityObjective(SparseModel(loaded.adapter, calibration), split, batch_size=3)


def test_chunked_loss_equals_the_models_own_loss(objective):
    adapter = objective.sparse_model.adapter
    batch = objective.tokens.calibration[:2]
    total, count = batch_nll(adapter, batch, head_chunk=17)
    with torch.no_grad():
        expected = adapter.model(input_ids=batch, labels=batch).loss.item()
    assert total / count == pytest.approx(expected, rel=1e-5)


def test_perplexity_rises_with_sparsity(objective):
    values = [objective(s).perplexity for s in (0.0, 0.3, 0.6, 0.9)]
    assert values == sorted(values) and values[-1] > 1.5 * values[0]
    dense = objective(0.0)
    assert dense.perplexity == pytest.approx(math.exp(dense.mean_nll)) and dense.measured_sparsity == 0.0


def test_measured_sparsity_is_close_to_the_request(objective):
    evaluation = objective([0.2, 0.5, 0.8])
    # Earlier blocks' sparsity shifts later blocks' inputs away from the calibration distribution, so the
    # measured share is near, not at, the nominal weighted mean.
    assert evaluation.measured_sparsity == pytest.approx(0.5, abs=0.05)


def test_heldout_differs_from_calibration_and_is_deterministic(objective):
    calibration_ppl = objective(0.4).perplexity
    heldout_ppl = objective.heldout(0.4).perplexity
    assert heldout_ppl != calibration_ppl
    assert objective.heldout(0.4).perplexity == heldout_ppl


def test_batch_callback_can_stop_early(objective):
    seen = []
    evaluation = objective(0.5, on_batch=lambda done, nll: seen.append(done) or done >= 3)
    assert seen == [3] and not evaluation.complete and evaluation.n_tokens == 3 * 63


def test_bad_allocations_are_refused(objective):
    with pytest.raises(InputError, match=r"in \[0, 1\)"):
        objective(1.2)
    with pytest.raises(InputError, match="one sparsity per block"):
        objective([0.1, 0.2])
