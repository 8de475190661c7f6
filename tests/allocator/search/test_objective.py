"""The objective: KL to the dense model (top-k reference) and perplexity, per sequence, at measured sparsity."""

from __future__ import annotations

import math

import pytest
import torch

from allocator import (
    InputError,
    Objective,
    SparseModel,
    batch_nll,
    calibrate,
    calibrate_allocation,
    compute_reference,
    full_kl,
    kl_to_reference,
    load_model,
    load_text,
    make_token_sets,
)

COUNTS = {"calibration": 8, "search": 8, "heldout": 8}


@pytest.fixture(scope="module")
def setup(trained_tiny_dir):
    loaded = load_model(trained_tiny_dir)
    sets = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=64, counts=COUNTS)
    calibration = calibrate(loaded.adapter, sets.calibration)
    objective = Objective(SparseModel(loaded.adapter, calibration), batch_size=3)
    reference = compute_reference(loaded.adapter, sets.search, k=32, batch_size=3)
    return loaded, sets, objective, reference


def test_chunked_loss_equals_the_models_own_loss(setup):
    loaded, sets, _, _ = setup
    batch = sets.search[:2]
    total, count = batch_nll(loaded.adapter, batch, head_chunk=17)
    with torch.no_grad():
        expected = loaded.model(input_ids=batch, labels=batch).loss.item()
    assert total / count == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_for_the_dense_model_and_grows_with_sparsity(setup):
    _, sets, objective, reference = setup
    dense = objective.evaluate(0.0, sets.search, reference=reference, rule="threshold")
    # Not exactly 0: the reference keeps half-precision log-probabilities (relative rounding ~5e-4).
    assert dense.kl == pytest.approx(0.0, abs=1e-4) and dense.measured_sparsity == 0.0
    kls = [objective.evaluate(s, sets.search, reference=reference).kl for s in (0.3, 0.6, 0.9)]
    assert 0 < kls[0] < kls[1] < kls[2]
    evaluation = objective.evaluate(0.6, sets.search, reference=reference)
    assert len(evaluation.sequence_kl) == len(evaluation.sequence_nll) == 8
    assert evaluation.kl == pytest.approx(sum(evaluation.sequence_kl) / 8)
    assert evaluation.perplexity == pytest.approx(math.exp(sum(evaluation.sequence_nll) / 8))


def test_top_k_kl_is_a_lower_bound_that_is_exact_with_the_whole_vocabulary(setup):
    loaded, sets, _, _ = setup
    vocabulary = loaded.model.config.vocab_size
    batch = sets.search[:2]
    with torch.no_grad():
        dense_logits = loaded.model(input_ids=batch).logits[:, :-1].reshape(-1, vocabulary)
        noisy = dense_logits + torch.randn(dense_logits.shape, generator=torch.Generator().manual_seed(0))
    exact = full_kl(noisy, dense_logits)
    whole = compute_reference(loaded.adapter, batch, k=vocabulary)
    rows = [r.reshape(-1, *r.shape[2:]) for r in whole.rows(slice(None))]
    assert torch.allclose(kl_to_reference(noisy, *rows), exact, rtol=1e-2, atol=1e-3)
    top = compute_reference(loaded.adapter, batch, k=8)
    approx = kl_to_reference(noisy, *[r.reshape(-1, *r.shape[2:]) for r in top.rows(slice(None))])
    assert bool((approx <= exact + 1e-3).all()) and float(approx.mean()) > 0


def test_the_quantile_rule_runs_every_site_at_its_target(setup):
    _loaded, sets, objective, reference = setup
    vector = [0.2, 0.6, 0.8]
    evaluation = objective.evaluate(vector, sets.search, reference=reference, rule="quantile")
    target = objective.sparse_model.site_sparsities(vector)
    error = (torch.tensor(evaluation.site_sparsity) - target).abs().max()
    assert float(error) < 0.01  # every site within one point of its target
    assert evaluation.measured_sparsity == pytest.approx(objective.sparse_model.model_sparsity(vector), abs=0.005)


def test_the_topk_rule_is_exact_per_token(setup):
    _, sets, objective, reference = setup
    evaluation = objective.evaluate(0.5, sets.search, reference=reference, rule="topk")
    site = torch.tensor(evaluation.site_sparsity)
    assert float((site - 0.5).abs().max()) < 0.01


def test_thresholds_calibrated_under_the_sparse_model_meet_the_target(setup):
    _, sets, objective, _ = setup
    sparse_model = objective.sparse_model
    vector = [0.3, 0.5, 0.7]
    calibration = calibrate_allocation(sparse_model, vector, sets.calibration, batch_size=3)
    thresholds = calibration.thresholds(sparse_model.site_sparsities(vector))
    on_calibration = objective.evaluate(vector, sets.calibration, rule="threshold", thresholds=thresholds)
    target = sparse_model.site_sparsities(vector)
    assert float((torch.tensor(on_calibration.site_sparsity) - target).abs().max()) < 0.01
    assert on_calibration.measured_sparsity == pytest.approx(sparse_model.model_sparsity(vector), abs=0.005)
    on_search = objective.evaluate(vector, sets.search, rule="threshold", thresholds=thresholds)
    assert on_search.measured_sparsity == pytest.approx(sparse_model.model_sparsity(vector), abs=0.02)


def test_batch_callback_can_stop_early(setup):
    _, sets, objective, reference = setup
    seen = []
    evaluation = objective.evaluate(
        0.5, sets.search, reference=reference, on_batch=lambda d, nll: seen.append(d) or d >= 3
    )
    assert seen == [3] and not evaluation.complete and len(evaluation.sequence_kl) == 3


def test_bad_allocations_and_references_are_refused(setup):
    _, sets, objective, reference = setup
    with pytest.raises(InputError, match=r"in \[0, 1\)"):
        objective.evaluate(1.2, sets.search)
    with pytest.raises(InputError, match="one sparsity per block"):
        objective.evaluate([0.1, 0.2], sets.search)
    with pytest.raises(InputError, match="reference has 8 sequences for 2"):
        objective.evaluate(0.5, sets.search[:2], reference=reference)
    with pytest.raises(InputError, match="no dense reference"):
        objective.evaluate(0.5, sets.search).value("kl")


def test_the_reference_holds_the_models_own_top_k_log_probabilities(setup):
    loaded, sets, _, reference = setup
    batch = sets.search[:3]
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(input_ids=batch).logits[:, :-1].float(), dim=-1)
    top = logprobs.topk(32, dim=-1)
    values, indices = (r for r in reference.rows(slice(0, 3))[:2])
    assert torch.equal(indices.long(), top.indices)
    assert torch.allclose(values.float(), top.values, atol=2e-3, rtol=1e-3)  # stored as float16
