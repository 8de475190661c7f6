"""A lookup that type-checks but means nothing is refused, in one sentence naming the field, by every reader:
:func:`read_lookup` and :func:`load_lookup`, the frontier's points and interpolation, and the NNCF integration.

Each case plants one broken invariant into a lookup written as the exporter writes one (``build_lookup`` and
``write_lookup`` on a tiny model, uneven per-site sparsities on the target, thresholds and quantile tables
from a real calibration).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from allocator import (
    LOOKUP_TOLERANCE,
    QUANTILE_LEVELS,
    SITE_NAMES,
    LookupFileError,
    build_frontier_index,
    build_lookup,
    calibrate,
    frontier_point,
    load_lookup,
    load_model,
    point_directory,
    read_lookup,
    write_lookup,
    write_lookup_file,
)
from allocator.integrations.nncf import nncf_targets, sparsify, write_nncf_file
from allocator.testing.tiny import build_tiny_model, save_model_dir

TARGETS = (0.4, 0.6)


def _lookup(loaded, calibration, target: float, seed: int, *, table: bool) -> dict:
    """A lookup at ``target`` with uneven sites (so a weighted mean differs from a plain one), as exported."""
    weights = loaded.adapter.site_weights()
    generator = torch.Generator().manual_seed(seed)
    sites = 0.1 + 0.3 * torch.rand(weights.shape, generator=generator, dtype=torch.float64)
    sites += target - float((sites * weights).sum() / weights.sum())
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
        study={"name": "checks", "trial": seed},
        quantile_levels=QUANTILE_LEVELS if table else None,
        quantiles=calibration.threshold_table(QUANTILE_LEVELS) if table else None,
    )


@pytest.fixture(scope="module")
def exports(tiny_tokenizer, tmp_path_factory):
    """A single-target lookup and a frontier export of two points, on a tiny random-weight Llama."""
    root = tmp_path_factory.mktemp("checks")
    model_dir = save_model_dir(build_tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer, root / "model")
    loaded = load_model(model_dir)
    generator = torch.Generator().manual_seed(0)
    calibrations = [
        calibrate(loaded.adapter, torch.randint(0, loaded.model.config.vocab_size, (4, 32), generator=generator))
        for _ in TARGETS
    ]
    single = write_lookup(root / "single", _lookup(loaded, calibrations[0], 0.5, seed=9, table=False))
    points = {
        t: _lookup(loaded, c, t, seed=k, table=True) for k, (t, c) in enumerate(zip(TARGETS, calibrations, strict=True))
    }
    entries = [
        {"target": t, "directory": point_directory(t), "achieved_sparsity": p["achieved_sparsity"], "trial": 0}
        for t, p in points.items()
    ]
    index = build_frontier_index(
        points=entries, model=loaded.identity(), details={"split": "greedy"}, study={"name": "checks"}
    )

    def extra(directory: Path) -> None:
        for target, lookup in points.items():
            (directory / point_directory(target)).mkdir()
            write_lookup_file(directory / point_directory(target), lookup)

    frontier = write_lookup(root / "frontier", index, extra=extra)
    return {"loaded": loaded, "single": single, "frontier": frontier}


def _sites(block: dict) -> list[float]:
    return [block["sites"][name]["sparsity"] for name in SITE_NAMES]


def _block_below_its_sites(lookup: dict) -> None:
    """Block 0 below every one of its sites (the issue's block at 0.1 whose sites are at 0.59)."""
    lookup["blocks"][0]["sparsity"] = min(_sites(lookup["blocks"][0])) - 0.05


def _unweighted_block(lookup: dict) -> None:
    """Block 0 at the plain mean of its sites: inside their range, off their parameter-weighted mean."""
    block = lookup["blocks"][0]
    plain = sum(_sites(block)) / len(SITE_NAMES)
    assert abs(plain - block["sparsity"]) > 10 * LOOKUP_TOLERANCE  # the case means something on this model
    block["sparsity"] = plain


def _achieved_off(lookup: dict) -> None:
    """The recorded model-level figures moved within the range of the blocks, off the weighted mean."""
    low = min(block["sparsity"] for block in lookup["blocks"])
    assert lookup["achieved_sparsity"] - low > 10 * LOOKUP_TOLERANCE
    lookup["achieved_sparsity"] = lookup["target_sparsity"] = (low + lookup["achieved_sparsity"]) / 2


def _set(path: str, value):
    """A mutation setting ``lookup[path...]`` (a dotted path, integers for list positions) to ``value``."""

    def mutate(lookup: dict) -> None:
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        node = lookup
        for part in parents:
            node = node[part]
        node[last] = value(node[last]) if callable(value) else value

    return mutate


def _extra_block(lookup: dict) -> None:
    lookup["model"]["n_blocks"] += 1
    lookup["blocks"].append({**json.loads(json.dumps(lookup["blocks"][-1])), "index": len(lookup["blocks"])})


# id: (mutation, what the sentence names, refused by a reader that does not know the model)
CASES = {
    "target not a number": (_set("target_sparsity", "fifty"), 'target_sparsity is "fifty"', True),
    "target out of range": (_set("target_sparsity", 1.5), "target_sparsity is 1.5; it must be a sparsity", True),
    "target NaN": (_set("target_sparsity", math.nan), "target_sparsity is nan; it must be a sparsity", True),
    "unknown site": (
        _set("blocks.0.sites.x", {"sparsity": 0.5, "threshold": 0.1}),
        'blocks[0].sites has the key "x"; a key should be',
        True,
    ),
    "duplicate index": (_set("blocks.2.index", 1), "blocks[2].index is 1, as is blocks[1].index", True),
    "indices out of order": (
        lambda lookup: lookup["blocks"].reverse(),
        "blocks[0].index is 2; blocks must be listed once each, by index 0 to 2, in order",
        True,
    ),
    "a block missing": (
        lambda lookup: lookup["blocks"].pop(),
        "blocks holds 2 blocks for a model of 3 (model.n_blocks)",
        True,
    ),
    "block outside its sites": (_block_below_its_sites, "blocks[0].sparsity is", True),
    "block at its sites' plain mean": (
        _unweighted_block,
        "blocks[0].sparsity is",
        False,
    ),
    "negative threshold": (
        _set("blocks.1.sites.q.threshold", -0.2),
        "blocks[1].sites.q.threshold is -0.2; thresholds must be finite and non-negative",
        True,
    ),
    "infinite threshold": (
        _set("blocks.2.sites.down.threshold", math.inf),
        "blocks[2].sites.down.threshold is inf; thresholds must be finite and non-negative",
        True,
    ),
    "site sparsity above one": (
        _set("blocks.1.sites.up.sparsity", 1.2),
        "blocks[1].sites.up.sparsity is 1.2; site sparsities must be in [0, 1)",
        True,
    ),
    "negative site sparsity": (
        _set("blocks.0.sites.k.sparsity", -0.1),
        "blocks[0].sites.k.sparsity is -0.1; site sparsities must be in [0, 1)",
        True,
    ),
    "target off the achieved": (
        _set("target_sparsity", lambda t: t - 0.1),
        "but achieved_sparsity is",
        True,
    ),
    "achieved off the sites' mean": (
        _achieved_off,
        "achieved_sparsity is",
        False,
    ),
    "more blocks than the model": (_extra_block, "model.n_blocks is 4, but the model has 3 blocks", False),
    "sparsify fraction zero": (_set("sparsify_fraction", 0.0), "sparsify_fraction is 0; it must be in (0, 1]", True),
}

# Planted in a frontier point (target 0.4): its quantile table, read when interpolating.
TABLE_CASES = {
    "decreasing table": (
        _set("blocks.1.sites.up.quantiles.20", 0.0),
        "blocks[1].sites.up.quantiles[20] is 0, below blocks[1].sites.up.quantiles[19]",
    ),
    "negative table entry": (
        _set("blocks.0.sites.o.quantiles.0", -1.0),
        "blocks[0].sites.o.quantiles[0] is -1; thresholds must be finite and non-negative",
    ),
    "table entry NaN": (
        _set("blocks.2.sites.v.quantiles.40", math.nan),
        "blocks[2].sites.v.quantiles[40] is nan",
    ),
    "short table": (
        _set("blocks.0.sites.gate.quantiles", lambda table: table[:-1]),
        "blocks[0].sites.gate.quantiles holds 40 thresholds for 41 quantile_levels",
    ),
    "levels not increasing": (
        _set("quantile_levels.5", 0.01),
        "quantile_levels[5] is 0.01; the levels must be strictly increasing",
    ),
    "duplicate index": (CASES["duplicate index"][0], CASES["duplicate index"][1]),
    "negative threshold": (CASES["negative threshold"][0], CASES["negative threshold"][1]),
}


def _plant(source: Path, tmp_path: Path, mutate, point: str | None = None) -> tuple[Path, dict]:
    """A copy of the export ``source`` with ``mutate`` applied to its (``point``'s) lookup.json."""
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    file = (copy / point if point else copy) / "lookup.json"
    lookup = json.loads(file.read_text())
    mutate(lookup)
    file.write_text(json.dumps(lookup))  # NaN and Infinity written as JSON readers other than ours accept
    return copy, lookup


def _refusal(call, subject: str, names: str) -> str:
    """``call()`` refused with one sentence that starts with ``subject`` and names the field."""
    with pytest.raises(LookupFileError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and message.endswith(".") and ". " not in message, message
    assert message.startswith(subject) and names in message, message
    return message


def _no_hooks(model) -> bool:
    return not any(module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize("case", list(CASES))
def test_a_single_lookup_that_means_nothing_is_refused(exports, tmp_path, case):
    mutate, names, without_model = CASES[case]
    model = exports["loaded"].model
    path, lookup = _plant(exports["single"], tmp_path, mutate)
    file = repr(str(path / "lookup.json"))
    if without_model:
        _refusal(lambda: read_lookup(path), f"Lookup {file}", names)
        _refusal(lambda: write_nncf_file(tmp_path, lookup), "The lookup", names)
    else:  # only the model's own site weights or block count tell: a reader without it lets it by
        assert read_lookup(path) == json.loads((path / "lookup.json").read_text())
    _refusal(lambda: load_lookup(model, path), f"Lookup {file}", names)
    _refusal(lambda: nncf_targets(lookup, model), "The lookup", names)
    assert _no_hooks(model)


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_a_frontier_point_that_means_nothing_is_refused(exports, tmp_path, case):
    mutate, names = TABLE_CASES[case]
    point = point_directory(0.4)
    path, _ = _plant(exports["frontier"], tmp_path, mutate, point)
    subject = f"Lookup {str(path / point / 'lookup.json')!r}: "
    _refusal(lambda: frontier_point(path, 0.5), subject, names)  # between the points: interpolating
    _refusal(lambda: frontier_point(path, 0.4), subject, names)  # at the point itself: its own thresholds
    _refusal(lambda: load_lookup(exports["loaded"].model, path, 0.45), subject, names)
    assert _no_hooks(exports["loaded"].model)


def test_the_interpolation_is_checked_with_the_models_weights(exports, tmp_path):
    """A point off its weighted means passes a reader without the model, and its interpolation is refused
    where the model is known."""
    path, _ = _plant(exports["frontier"], tmp_path, _unweighted_block, point_directory(0.4))
    assert frontier_point(path, 0.5)["frontier"]["targets"] == [0.4, 0.6]
    index = repr(str(path / "lookup.json"))
    _refusal(lambda: load_lookup(exports["loaded"].model, path, 0.5), f"Lookup {index} at sparsity 0.5: ", "blocks[0]")


def test_a_frontier_point_of_another_block_count_is_refused(exports, tmp_path):
    point = point_directory(0.6)
    path, _ = _plant(exports["frontier"], tmp_path, _extra_block, point)
    subject = f"Lookup {str(path / point / 'lookup.json')!r}: "
    _refusal(lambda: frontier_point(path, 0.5), subject, "model.n_blocks is 4, but its frontier's index has 3")


def test_nncf_refuses_a_lookup_that_means_nothing_before_it_runs(exports, tmp_path):
    pytest.importorskip("nncf", reason="needs the `nncf` extra: pip install -e '.[nncf]'")
    model = load_model(exports["single"].parent / "model").model
    path, _ = _plant(exports["single"], tmp_path, CASES["duplicate index"][0])
    tokens = torch.randint(0, model.config.vocab_size, (2, 16))
    _refusal(lambda: sparsify(model, path, tokens), f"Lookup {str(path / 'lookup.json')!r}: ", "blocks[2].index")
    assert not any(name.startswith("__nncf") for name, _ in model.named_modules())  # refused before NNCF ran


def test_lookups_as_exported_load_everywhere(exports, tmp_path):
    model = exports["loaded"].model
    single = read_lookup(exports["single"])
    with load_lookup(model, exports["single"]):
        pass
    assert len(nncf_targets(single, model)) == 3 * len(SITE_NAMES)
    write_nncf_file(tmp_path, single)
    for sparsity in (0.4, 0.45, 0.5, 0.6):
        with load_lookup(model, exports["frontier"], sparsity):
            pass
        assert nncf_targets(frontier_point(exports["frontier"], sparsity), model)
    assert _no_hooks(model)


def test_a_target_not_recorded_is_allowed(exports, tmp_path):
    """The format lets a writer leave the target out (null): the achieved sparsity is then what is checked."""
    path, _ = _plant(exports["single"], tmp_path, _set("target_sparsity", None))
    assert read_lookup(path)["target_sparsity"] is None
    with load_lookup(exports["loaded"].model, path):
        pass
