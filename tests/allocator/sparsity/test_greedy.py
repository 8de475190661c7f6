from __future__ import annotations

import pytest
import torch

from allocator import (
    BlendSplit,
    GreedySplit,
    GreedyTable,
    InputError,
    Sparsifiers,
    build_greedy_table,
    calibrate,
    capture_block_inputs,
    load_model,
    load_text,
    make_token_sets,
)


@pytest.fixture(scope="module")
def built(trained_tiny_dir):
    loaded = load_model(trained_tiny_dir)
    split = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=48, counts={"calibration": 6, "heldout": 2})
    calibration = calibrate(loaded.adapter, split.calibration)
    table = build_greedy_table(loaded.adapter, calibration, split.calibration[:2], step=0.05, max_sparsity=0.8)
    return loaded, split, calibration, table


def test_rows_climb_by_step_and_sites_only_rise(built):
    loaded, _, _, table = built
    weights = loaded.adapter.site_weights()
    for b in range(table.n_blocks):
        effective, sites = table.effective[b], table.sites[b]
        assert effective[0] == 0 and effective[-1] >= 0.8 - 1e-9
        assert torch.allclose(effective, (sites * weights[b]).sum(dim=1) / weights[b].sum(), atol=1e-12)
        steps = effective[1:] - effective[:-1]
        assert bool((steps > 0).all()) and bool((steps <= 0.05 + 1e-9).all())
        assert bool((sites[1:] >= sites[:-1]).all())


def test_split_meets_every_block_target_exactly(built):
    loaded, _, _, table = built
    weights = loaded.adapter.site_weights()
    targets = torch.tensor([0.0, 0.37, 0.8], dtype=torch.float64)
    sites = GreedySplit(table).site_sparsities(targets)
    assert torch.allclose((sites * weights).sum(dim=1) / weights.sum(dim=1), targets, atol=1e-12)
    with pytest.raises(InputError, match="above the greedy table's maximum"):
        table.site_sparsities(torch.tensor([0.5, 0.5, 0.95], dtype=torch.float64))


def test_blend_mixes_the_splits_and_keeps_every_block_target(built):
    loaded, _, _, table = built
    weights = loaded.adapter.site_weights()
    targets = torch.tensor([0.1, 0.45, 0.8], dtype=torch.float64)
    greedy = GreedySplit(table).site_sparsities(targets)
    for weight in (0.0, 0.3, 1.0):
        sites = BlendSplit(GreedySplit(table), weight).site_sparsities(targets)
        expected = (1 - weight) * targets.unsqueeze(1) + weight * greedy
        assert torch.allclose(sites, expected, atol=1e-12)
        assert torch.allclose((sites * weights).sum(dim=1) / weights.sum(dim=1), targets, atol=1e-12)
    assert not torch.allclose(greedy, targets.unsqueeze(1).expand_as(greedy))  # the mixture is not trivial
    with pytest.raises(InputError, match="weight of a blended split"):
        BlendSplit(GreedySplit(table), 1.5)


@torch.no_grad()
def test_batched_candidates_score_like_one_at_a_time(built):
    """The vectorised step must give each candidate the error it has when evaluated alone."""
    loaded, split, calibration, table = built
    tokens = split.calibration[:2]
    args, kwargs = capture_block_inputs(loaded.adapter, tokens)[1]
    layer = loaded.adapter.layers[1]
    dense = layer(*args, **kwargs)
    dense = dense[0] if isinstance(dense, tuple) else dense
    for row in (1, len(table.effective[1]) // 2, len(table.effective[1]) - 1):
        site_sparsities = torch.zeros(loaded.adapter.n_blocks, 7, dtype=torch.float64)
        site_sparsities[1] = table.sites[1][row]
        sparsifiers = Sparsifiers(loaded.adapter, score=calibration.score, count=False)
        sparsifiers.set_thresholds(calibration.thresholds(site_sparsities))
        with sparsifiers:
            alone = layer(*args, **kwargs)
        alone = alone[0] if isinstance(alone, tuple) else alone
        error = (alone - dense).pow(2).mean().item()
        assert error == pytest.approx(float(table.error[1][row]), rel=1e-4)


def test_round_trips_through_bytes(built):
    *_, table = built
    restored = GreedyTable.from_bytes(table.to_bytes())
    assert restored.settings == table.settings
    assert all(torch.equal(a, b) for a, b in zip(restored.sites, table.sites, strict=True))


def test_bad_settings_are_refused(built):
    loaded, split, calibration, _ = built
    with pytest.raises(InputError, match="`step`"):
        build_greedy_table(loaded.adapter, calibration, split.calibration[:1], step=0.0)
    with pytest.raises(InputError, match="`max_sparsity`"):
        build_greedy_table(loaded.adapter, calibration, split.calibration[:1], max_sparsity=1.0)


# -- the fast greedy path gives TEAL's tables ------------------------------------------------------------------
def _tables_agree(one: GreedyTable, other: GreedyTable) -> None:
    assert one.n_blocks == other.n_blocks
    for b in range(one.n_blocks):
        assert torch.equal(one.sites[b], other.sites[b]), f"block {b} took another path"
        assert torch.allclose(one.error[b], other.error[b], rtol=1e-4, atol=1e-9)
        assert torch.allclose(one.baseline_error[b], other.baseline_error[b], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize(
    "protocol",
    [
        {"error_positions": 1.0, "error_norm": "mse"},
        {"error_positions": 0.25, "error_norm": "l2"},
        {"error_positions": 0.25, "error_norm": "l2", "sparsify_fraction": 0.5},
    ],
    ids=["default", "teal", "teal-half-sparsified"],
)
def test_fast_stacked_and_one_forward_per_candidate_give_the_same_table(tmp_path, architecture, protocol):
    from allocator.testing.tiny import build_tiny_model_dir

    loaded = load_model(build_tiny_model_dir(tmp_path / architecture, architecture, n_layers=2))
    split = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=32, counts={"calibration": 4})
    calibration = calibrate(loaded.adapter, split.calibration)
    tables = {
        method: build_greedy_table(
            loaded.adapter, calibration, split.calibration[:3], step=0.04, max_sparsity=0.8, method=method, **protocol
        )
        for method in ("naive", "stacked", "fast")
    }
    _tables_agree(tables["naive"], tables["stacked"])
    _tables_agree(tables["naive"], tables["fast"])


def test_teal_step_raises_a_site_by_005_over_its_weight_relative_to_q(built):
    from allocator.sparsity import teal_step

    loaded, _, _, _ = built
    weights = loaded.adapter.site_weights()[0]
    step = teal_step(weights)
    site_step = step * weights.sum() / weights  # what one greedy step raises each site by
    assert torch.allclose(site_step, 0.05 * weights[0] / weights)


def test_bad_error_settings_are_refused(built):
    loaded, split, calibration, _ = built
    with pytest.raises(InputError, match="error_positions"):
        build_greedy_table(loaded.adapter, calibration, split.calibration[:1], error_positions=0.0)
    with pytest.raises(InputError, match="error_norm"):
        build_greedy_table(loaded.adapter, calibration, split.calibration[:1], error_norm="max")
    with pytest.raises(InputError, match="method"):
        build_greedy_table(loaded.adapter, calibration, split.calibration[:1], method="quick")
