from __future__ import annotations

import pytest
import torch

from allocator import Score, SparseModel, Sparsifiers, calibrate, load_model, load_text, make_token_sets


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    loaded = load_model(tiny_model_dir)
    split = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=48, counts={"calibration": 6, "heldout": 2})
    return loaded, split, calibrate(loaded.adapter, split.calibration)


def _capture_input(module, store: dict) -> torch.utils.hooks.RemovableHandle:
    """Record a module's input without changing it (the hook returns None)."""

    def hook(_module, args):
        store["x"] = args[0].clone()

    return module.register_forward_pre_hook(hook)


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


@torch.no_grad()
def test_sparsity_zero_reproduces_dense_logits_exactly(setup):
    loaded, split, calibration = setup
    dense = loaded.model(split.heldout).logits
    with SparseModel(loaded.adapter, calibration).applied(0.0):
        sparse = loaded.model(split.heldout).logits
    assert torch.equal(dense, sparse)


@torch.no_grad()
def test_nonzero_sparsity_changes_logits_and_hooks_are_removed_after(setup):
    loaded, split, calibration = setup
    dense = loaded.model(split.heldout).logits
    sparse_model = SparseModel(loaded.adapter, calibration)
    with sparse_model.applied(0.5):
        assert _hook_count(loaded.model) == 7 * loaded.adapter.n_blocks
        sparse = loaded.model(split.heldout).logits
    assert not torch.equal(dense, sparse)
    assert _hook_count(loaded.model) == 0
    assert torch.equal(loaded.model(split.heldout).logits, dense)


def test_hooks_are_removed_when_the_block_raises(setup):
    loaded, _, calibration = setup
    with pytest.raises(RuntimeError, match="boom"), SparseModel(loaded.adapter, calibration).applied(0.3):
        raise RuntimeError("boom")
    assert _hook_count(loaded.model) == 0


@torch.no_grad()
def test_inputs_at_or_below_threshold_are_zeroed_and_the_rest_kept(setup):
    loaded, split, _ = setup
    site = loaded.adapter.sites[1][6]  # down_proj of block 1
    seen = {}
    handle = _capture_input(site.module, seen)
    try:
        loaded.adapter.body(input_ids=split.heldout)  # dense input of the site
    finally:
        handle.remove()
    sparsifiers = Sparsifiers(loaded.adapter, score=Score())
    thresholds = torch.zeros(loaded.adapter.n_blocks, 7, dtype=torch.float64)
    thresholds[1, 6] = seen["x"].abs().median().item()
    sparsifiers.set_thresholds(thresholds)
    captured = {}
    with sparsifiers:
        handle = _capture_input(site.module, captured)  # registered after the sparsifier: sees its output
        try:
            loaded.adapter.body(input_ids=split.heldout)
        finally:
            handle.remove()
    x, y = seen["x"], captured["x"]
    kept = x.abs() > thresholds[1, 6].item()
    assert torch.equal(y[kept], x[kept]) and bool((y[~kept] == 0).all())
    measured = sparsifiers.measured_site_sparsity()
    assert measured[1, 6].item() == pytest.approx((~kept).double().mean().item())
    assert measured[0].abs().sum() == 0  # inactive sites report 0


@torch.no_grad()
def test_weight_aware_keeps_inputs_whose_score_exceeds_the_threshold(setup):
    loaded, split, _ = setup
    score = Score("weight_aware", norm=2)
    site = loaded.adapter.sites[0][4]  # gate_proj of block 0
    seen = {}
    handle = _capture_input(site.module, seen)
    try:
        loaded.adapter.body(input_ids=split.heldout)
    finally:
        handle.remove()
    norms = site.module.weight.norm(p=2, dim=0)
    scores = seen["x"].abs() * norms
    threshold = scores.median().item()
    sparsifiers = Sparsifiers(loaded.adapter, score=score, apply=False)
    thresholds = torch.zeros(loaded.adapter.n_blocks, 7, dtype=torch.float64)
    thresholds[0, 4] = threshold
    sparsifiers.set_thresholds(thresholds)
    with sparsifiers:
        loaded.adapter.body(input_ids=split.heldout)
    expected = (scores <= threshold).double().mean().item()
    assert sparsifiers.measured_site_sparsity()[0, 4].item() == pytest.approx(expected, abs=1e-3)


@torch.no_grad()
def test_sparsify_fraction_leaves_leading_tokens_dense(setup):
    loaded, split, calibration = setup
    dense = loaded.model(split.heldout).logits  # (B, T, V)
    with SparseModel(loaded.adapter, calibration, sparsify_fraction=0.5).applied(0.6):
        sparse = loaded.model(split.heldout).logits
    half = split.heldout.shape[1] // 2
    # Causal attention: positions before the sparsified half only ever see dense inputs.
    assert torch.equal(sparse[:, :half], dense[:, :half])
    assert not torch.equal(sparse[:, half:], dense[:, half:])


def test_bad_fraction_and_allocations_are_refused(setup):
    loaded, _, calibration = setup
    with pytest.raises(ValueError, match="`sparsify_fraction`"):
        SparseModel(loaded.adapter, calibration, sparsify_fraction=0.0)
    sparse_model = SparseModel(loaded.adapter, calibration)
    for bad in (1.0, -0.1, float("nan"), [0.5] * (loaded.adapter.n_blocks + 1)):
        with pytest.raises(ValueError):
            sparse_model.set_allocation(bad)
