from __future__ import annotations

import pytest
import torch

from allocator import Calibration, Score, Sparsifiers, calibrate, load_model, load_text, make_token_sets


@pytest.fixture(scope="module")
def prepared(tiny_model_dir):
    loaded = load_model(tiny_model_dir)
    split = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=64, counts={"calibration": 8, "heldout": 4})
    return loaded, split


@pytest.mark.parametrize("score", [Score("magnitude"), Score("weight_aware", norm=1), Score("weight_aware", norm=2)])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75, 0.9])
def test_every_site_reproduces_the_requested_sparsity_on_calibration_tokens(prepared, score, sparsity):
    loaded, split = prepared
    calibration = calibrate(loaded.adapter, split.calibration, score=score, model_fingerprint=loaded.fingerprint)
    sites = torch.full((loaded.adapter.n_blocks, 7), sparsity, dtype=torch.float64)
    # Count on the dense activations the thresholds were calibrated on (apply=False leaves inputs untouched).
    sparsifiers = Sparsifiers(loaded.adapter, score=score, apply=False)
    sparsifiers.set_thresholds(calibration.thresholds(sites))
    with sparsifiers, torch.no_grad():
        loaded.adapter.body(input_ids=split.calibration)
    measured = sparsifiers.measured_site_sparsity()
    assert (measured - sparsity).abs().max().item() <= 0.005


def test_magnitude_sites_reading_one_tensor_share_a_histogram(prepared):
    loaded, split = prepared
    calibration = calibrate(loaded.adapter, split.calibration)
    q, k, v, o, gate, up, down = calibration.histograms[0]
    assert q is k is v and gate is up
    assert len({id(h) for h in (q, o, gate, down)}) == 4
    weight_aware = calibrate(loaded.adapter, split.calibration, score=Score("weight_aware"))
    assert len({id(h) for h in weight_aware.histograms[0]}) == 7


def test_histogram_counts_every_input_element(prepared):
    loaded, split = prepared
    calibration = calibrate(loaded.adapter, split.calibration, batch_size=3)
    n_tokens = split.calibration.numel()
    for block in loaded.adapter.sites:
        for site, hist in zip(block, calibration.histograms[block[0].block], strict=True):
            assert hist.total == n_tokens * site.in_features


def test_round_trips_through_bytes(prepared):
    loaded, split = prepared
    calibration = calibrate(loaded.adapter, split.calibration, model_fingerprint=loaded.fingerprint, data={"a": 1})
    restored = Calibration.from_bytes(calibration.to_bytes())
    assert restored.model_fingerprint == loaded.fingerprint and restored.data == {"a": 1}
    assert restored.histograms[1][0] is restored.histograms[1][2]  # sharing survives
    sites = torch.rand(loaded.adapter.n_blocks, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(restored.thresholds(sites), calibration.thresholds(sites))


def test_out_of_range_site_sparsity_is_refused(prepared):
    loaded, split = prepared
    calibration = calibrate(loaded.adapter, split.calibration)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        calibration.thresholds(torch.full((loaded.adapter.n_blocks, 7), 1.0))


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("score", ["magnitude", "weight_aware"])
def test_calibration_under_the_sparse_model_is_the_same_in_one_pass_and_per_group(tmp_path, architecture, score):
    from allocator import SparseModel, calibrate_allocation
    from allocator.testing.tiny import build_tiny_model_dir

    loaded = load_model(build_tiny_model_dir(tmp_path / architecture, architecture, n_layers=3))
    sets = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=24, counts={"calibration": 7})
    sparse_model = SparseModel(loaded.adapter, calibrate(loaded.adapter, sets.calibration, score=Score(score)))
    allocation = torch.tensor([0.3, 0.6, 0.45], dtype=torch.float64)
    one_pass, per_group = (
        calibrate_allocation(sparse_model, allocation, sets.calibration, batch_size=3, method=method)
        for method in ("one_pass", "per_group")
    )
    sites = sparse_model.site_sparsities(allocation)
    for b in range(loaded.adapter.n_blocks):
        for i in range(7):
            one = one_pass.histograms[b][i].thresholds(sites[b, i : i + 1])
            other = per_group.histograms[b][i].thresholds(sites[b, i : i + 1])
            assert torch.allclose(one, other, rtol=1e-6), (b, i)
