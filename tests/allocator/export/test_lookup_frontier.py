"""Frontier lookups: the index, loading a point, interpolating between points, and the errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from allocator import (
    QUANTILE_LEVELS,
    SITE_NAMES,
    InputError,
    LookupFileError,
    OutputError,
    build_frontier_index,
    build_lookup,
    calibrate,
    check_export_target,
    frontier_point,
    load_lookup,
    load_model,
    lookup_thresholds,
    point_directory,
    read_lookup,
    write_lookup,
    write_lookup_file,
    write_teal_frontier_files,
)

TARGETS = (0.4, 0.5, 0.7)
# The keys of a single-target lookup.json, as every export before frontiers wrote them.
SINGLE_KEYS = [
    "format",
    "model",
    "score",
    "sparsify_fraction",
    "split",
    "target_sparsity",
    "achieved_sparsity",
    "blocks",
    "calibration",
    "study",
    "created_at",
    "tool_version",
]


def _on_target(loaded, target: float, seed: int) -> torch.Tensor:
    """Random, uneven per-site sparsities (``n_blocks x 7``) whose site-weighted mean is exactly ``target``."""
    weights = loaded.adapter.site_weights().to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    sites = 0.15 + 0.2 * torch.rand(weights.shape, generator=generator, dtype=torch.float64)
    sites += target - float((sites * weights).sum() / weights.sum())
    return sites


def _lookup(loaded, calibration, sites: torch.Tensor, target: float, *, table: bool) -> dict:
    weights = loaded.adapter.site_weights().to(torch.float64)
    return build_lookup(
        model=loaded.identity(),
        score=calibration.score,
        sparsify_fraction=1.0,
        split="greedy",
        target=target,
        block_sparsities=(sites * weights).sum(1) / weights.sum(1),
        site_sparsities=sites,
        thresholds=calibration.thresholds(sites),
        site_weights=weights,
        calibration={"tokens": calibration.n_tokens},
        study={"name": "synthetic", "trial": int(target * 100)},
        quantile_levels=QUANTILE_LEVELS if table else None,
        quantiles=calibration.threshold_table(QUANTILE_LEVELS) if table else None,
    )


@pytest.fixture(scope="module")
def frontier(trained_tiny_dir, tmp_path_factory):
    """A frontier export of three points, each with its own calibration (so their quantile tables differ)."""
    loaded = load_model(trained_tiny_dir)
    generator = torch.Generator().manual_seed(0)
    points, calibrations = {}, {}
    for k, target in enumerate(TARGETS):
        tokens = torch.randint(0, loaded.model.config.vocab_size, (4, 32), generator=generator)
        calibrations[target] = calibrate(loaded.adapter, tokens)
        sites = _on_target(loaded, target, seed=k)
        points[target] = _lookup(loaded, calibrations[target], sites, target, table=True)
    entries = [
        {"target": t, "directory": point_directory(t), "achieved_sparsity": p["achieved_sparsity"], "trial": 0}
        for t, p in points.items()
    ]
    index = build_frontier_index(
        points=entries, model=loaded.identity(), details={"split": "greedy"}, study={"name": "synthetic"}
    )
    weights = loaded.adapter.site_weights().to(torch.float64)

    def extra(directory):
        for target, lookup in points.items():
            (directory / point_directory(target)).mkdir()
            write_lookup_file(directory / point_directory(target), lookup)
        sites = [
            torch.tensor([[b["sites"][n]["sparsity"] for n in SITE_NAMES] for b in p["blocks"]], dtype=torch.float64)
            for p in points.values()
        ]
        write_teal_frontier_files(directory, calibrations[0.5], sites, weights)

    out = write_lookup(tmp_path_factory.mktemp("frontier") / "lookup", index, extra=extra)
    return {"loaded": loaded, "out": out, "points": points, "calibrations": calibrations, "weights": weights}


def _sites(lookup: dict, key: str = "sparsity") -> np.ndarray:
    return np.array([[block["sites"][name][key] for name in SITE_NAMES] for block in lookup["blocks"]])


@pytest.mark.parametrize("sparsity", [0.41, 0.45, 0.5 + 1e-6, 0.62, 0.699])
def test_interpolation_is_exact_on_the_constraint_and_convex(frontier, sparsity):
    lookup = frontier_point(frontier["out"], sparsity)
    low, high = lookup["frontier"]["targets"]
    assert low < sparsity < high and [low, high] in ([0.4, 0.5], [0.5, 0.7])
    weight = (sparsity - low) / (high - low)
    a, b = frontier["points"][low], frontier["points"][high]
    weights = frontier["weights"].numpy()
    sites = _sites(lookup)
    assert abs(float((sites * weights).sum() / weights.sum()) - sparsity) <= 1e-9  # model level: exactly s
    assert lookup["target_sparsity"] == sparsity and abs(lookup["achieved_sparsity"] - sparsity) <= 1e-9
    np.testing.assert_allclose(sites, (1 - weight) * _sites(a) + weight * _sites(b), rtol=0, atol=1e-12)
    blocks = np.array([block["sparsity"] for block in lookup["blocks"]])
    expected = (1 - weight) * np.array([x["sparsity"] for x in a["blocks"]]) + weight * np.array(
        [x["sparsity"] for x in b["blocks"]]
    )
    np.testing.assert_allclose(blocks, expected, rtol=0, atol=1e-12)
    assert (sites >= np.minimum(_sites(a), _sites(b)) - 1e-12).all()
    assert (sites <= np.maximum(_sites(a), _sites(b)) + 1e-12).all()


def test_interpolated_thresholds_combine_both_points_calibrations(frontier):
    lookup = frontier_point(frontier["out"], 0.45)
    sites = torch.tensor(_sites(lookup))
    calibrations = frontier["calibrations"]
    # Each point's threshold read at the interpolated site sparsities, straight from its histograms.
    expected = 0.5 * calibrations[0.4].thresholds(sites) + 0.5 * calibrations[0.5].thresholds(sites)
    found = lookup_thresholds(lookup)
    assert float(((found - expected).abs() / expected).max()) < 0.02  # the quantile table's linear reading
    alone = calibrations[0.4].thresholds(sites)
    assert float(((found - alone).abs() / alone).max()) > 0.02  # point b's calibration does count


def test_loading_at_a_target_is_that_point(frontier):
    for target in TARGETS:
        lookup = frontier_point(frontier["out"], target)
        point = read_lookup(frontier["out"] / point_directory(target))
        assert lookup["blocks"] == point["blocks"]
        assert lookup["frontier"]["targets"] == [target]


def _logits(model, path, sparsity=None) -> torch.Tensor:
    tokens = torch.arange(64).view(2, 32) % model.config.vocab_size
    with load_lookup(model, path, sparsity), torch.no_grad():
        return model(input_ids=tokens).logits


def test_load_lookup_installs_the_chosen_point(frontier, tmp_path):
    model = frontier["loaded"].model
    at_target = _logits(model, frontier["out"], 0.5)
    assert torch.equal(at_target, _logits(model, frontier["out"] / point_directory(0.5)))
    between = _logits(model, frontier["out"], 0.6)
    single = write_lookup(tmp_path / "single", frontier_point(frontier["out"], 0.6))
    assert torch.equal(between, _logits(model, single))
    assert not torch.equal(between, at_target) and not torch.equal(between, _logits(model, frontier["out"], 0.7))


def _one_sentence(error: Exception) -> str:
    message = str(error)
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0, message
    return message


def test_a_frontier_needs_a_sparsity_in_its_range(frontier):
    with pytest.raises(InputError) as missing:
        frontier_point(frontier["out"])
    assert "give a sparsity in [0.4, 0.7]" in _one_sentence(missing.value)
    for outside in (0.39, 0.71):
        with pytest.raises(InputError) as error:
            load_lookup(frontier["loaded"].model, frontier["out"], outside)
        assert "outside the frontier" in _one_sentence(error.value) and "[0.4, 0.7]" in str(error.value)
    with pytest.raises(InputError, match="should be in"):
        frontier_point(frontier["out"], 1.5)
    with pytest.raises(LookupFileError, match="is a frontier of several allocations"):
        read_lookup(frontier["out"])
    assert not any(m._forward_pre_hooks for m in frontier["loaded"].model.modules())


def test_a_single_target_lookup_loads_with_or_without_its_target(frontier, tmp_path):
    loaded = frontier["loaded"]
    sites = _on_target(loaded, 0.5, seed=7)
    lookup = _lookup(loaded, frontier["calibrations"][0.5], sites, 0.5, table=False)
    assert list(lookup) == SINGLE_KEYS  # the layout of every earlier export
    assert set(lookup["blocks"][0]["sites"]["q"]) == {"sparsity", "threshold"}
    path = write_lookup(tmp_path / "old", lookup)
    assert torch.equal(_logits(loaded.model, path), _logits(loaded.model, path, 0.5))
    assert frontier_point(path) == read_lookup(path)
    with pytest.raises(InputError) as error:
        load_lookup(loaded.model, path, 0.6)
    assert "holds one allocation, at sparsity 0.5" in _one_sentence(error.value)


def test_malformed_index_and_quantile_tables_are_refused(frontier, tmp_path):
    index = json.loads((frontier["out"] / "lookup.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "lookup.json").write_text(json.dumps({**index, "points": index["points"][::-1]}))
    with pytest.raises(LookupFileError, match="not strictly increasing"):
        frontier_point(broken, 0.5)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "lookup.json").write_text(json.dumps(index))
    for target, lookup in frontier["points"].items():
        (copy / point_directory(target)).mkdir()
        damaged = json.loads(json.dumps(lookup))
        del damaged["blocks"][0]["sites"]["o"]["quantiles"]
        write_lookup_file(copy / point_directory(target), damaged)
    frontier_point(copy, 0.5)  # a point itself needs no table
    with pytest.raises(LookupFileError, match="no valid quantile table"):
        frontier_point(copy, 0.55)


def test_teal_files_hold_one_row_per_point(frontier):
    weights = frontier["weights"]
    for layer in range(frontier["loaded"].adapter.n_blocks):
        with (frontier["out"] / "lookup" / f"layer-{layer}" / "results.csv").open() as handle:
            rows = list(csv.reader(handle))[1:]
        effective = [float(row[0]) for row in rows]
        assert len(rows) == len(TARGETS) and effective == sorted(effective)
        for lookup in frontier["points"].values():
            sites = torch.tensor(_sites(lookup)[layer])
            mine = float((sites * weights[layer]).sum() / weights[layer].sum())
            nearest = min(rows, key=lambda row: abs(float(row[0]) - mine))
            assert [float(x) for x in nearest[3:]] == pytest.approx(sites.tolist(), abs=1e-12)
    assert (frontier["out"] / "histograms" / "layer-0" / "mlp" / "histograms.pt").is_file()


def test_an_earlier_frontier_export_may_be_replaced(frontier, tmp_path):
    assert check_export_target(frontier["out"]) == frontier["out"]
    stray = tmp_path / "stray"
    (stray / "target-0.40").mkdir(parents=True)
    with pytest.raises(OutputError, match="not a sparsealloc export"):
        check_export_target(stray)
