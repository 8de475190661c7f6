"""What a lookup must mean, not only which types it holds: the one check every reader of a lookup goes through.

A lookup (``sparsealloc.lookup/v1``, see :mod:`allocator.export._lookup`) is an interface other tools write too, so
a reader trusts nothing in it. :func:`check_lookup` refuses, in one sentence naming the field, a lookup whose

- structure is off: a missing key, a value of the wrong type (strict: the string ``"0.3"`` is no number);
- blocks are not listed as ``blocks[i].index == i`` for ``i = 0 … n−1``, with ``n = model.n_blocks`` (and, where
  the model is known, its own block count);
- numbers are out of range: block and site sparsities in [0, 1), thresholds finite and non-negative,
  ``target_sparsity`` and ``achieved_sparsity`` numbers in [0, 1) or null ("not recorded"), ``quantile_levels``
  strictly increasing in [0, 1) and every site's quantile table (one threshold per level) non-decreasing;
- means disagree: each block's sparsity is the parameter-weighted mean of its sites' sparsities, the recorded
  ``achieved_sparsity`` the weighted mean of every site's, and ``target_sparsity`` the achieved one.

The site weights (each site's ``weight.numel()``) are not written in a lookup: they come from the model (one
source of truth), so the means are checked exactly where the model is known (:func:`allocator.load_lookup`,
``sparsealloc apply``, the NNCF integration), and without it as bounds a weighted mean always meets (a block's
sparsity lies between its sites' smallest and largest, the model's between its blocks').

Pure Python and pydantic, no torch: ``nncf.json`` is written where torch is not installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ValidationError, field_validator

from allocator.errors import LookupFileError
from allocator.model import SITE_NAMES
from allocator.schema import StrictDocument

#: How far a recorded mean (a block's sparsity, ``achieved_sparsity``, ``target_sparsity``) may be from the mean
#: recomputed from its parts. Our exporter writes every float at full precision (JSON round-trips a float64
#: exactly), so its figures agree to float64 summation error (about 1e-16), and a study's vectors meet their
#: target to the constraint's projection error (at most 1e-12 relative): 1e-4 passes them by many orders of
#: magnitude, and passes a writer that rounds to five decimals, yet is far below any sparsity that can be
#: measured on text (exported thresholds meet their target within about 5e-3).
LOOKUP_TOLERANCE = 1e-4
#: A quantile table's step down smaller than this share of its value is rounding, not a decrease.
_TABLE_SLACK = 1e-9


class _SiteEntry(StrictDocument):
    sparsity: float
    threshold: float
    quantiles: list[float] | None = None


class _BlockEntry(StrictDocument):
    index: int
    sparsity: float
    sites: dict[Literal["q", "k", "v", "o", "gate", "up", "down"], _SiteEntry]

    @field_validator("sites")
    @classmethod
    def _every_site(cls, sites: dict[str, _SiteEntry]) -> dict[str, _SiteEntry]:
        missing = [name for name in SITE_NAMES if name not in sites]
        if missing:
            raise ValueError(f"has no entry for site(s) {', '.join(missing)}")
        return sites


class _ModelEntry(StrictDocument):
    name: str
    architecture: str
    n_blocks: int
    fingerprint: str


class _ScoreEntry(StrictDocument):
    kind: Literal["magnitude", "weight_aware"]
    norm: Literal[1, 2] | None = None


class _LookupDocument(StrictDocument):
    """What a reader relies on, with strict types; ranges and agreements are :func:`check_lookup`'s."""

    format: Literal["sparsealloc.lookup/v1"]
    model: _ModelEntry
    score: _ScoreEntry
    sparsify_fraction: float
    target_sparsity: float | None = None
    achieved_sparsity: float | None = None
    quantile_levels: list[float] | None = None
    blocks: list[_BlockEntry]


def check_lookup(
    lookup: Any, subject: str = "The lookup", *, site_weights: Sequence[Sequence[float]] | None = None
) -> None:
    """Refuse a lookup document that is malformed or means nothing, in one sentence naming the field.

    ``subject`` starts the sentence (``"Lookup '/x/lookup.json'"``, ``"The lookup"``). ``site_weights``, the
    model's ``n_blocks x 7`` site weights (:meth:`allocator.ModelAdapter.site_weights`) where the model is
    known, makes the block count and the weighted means exact checks (module docstring).
    """
    document = check_lookup_structure(lookup, subject)
    problem = (
        _blocks_problem(document, site_weights)
        or _figures_problem(document)
        or next(filter(None, (_block_problem(b, block, document) for b, block in enumerate(document.blocks))), None)
        or _means_problem(document, site_weights)
    )
    if problem is not None:
        raise LookupFileError(f"{subject}: {problem}.")


def check_lookup_structure(lookup: Any, subject: str) -> _LookupDocument:
    """The lookup's structure alone (keys and strict types), in one sentence naming the field if it is off;
    for a reader that checks something else (the model's identity) before :func:`check_lookup`'s meaning."""
    if not isinstance(lookup, dict):
        raise LookupFileError(f"{subject} is not a sparsealloc lookup (not a JSON object).")
    try:
        return _LookupDocument.model_validate(lookup)
    except ValidationError as error:
        first = error.errors()[0]
        where, shown = _field(first["loc"]), _shown(first.get("input"))
        if first["type"] == "missing":
            problem = f"{where} is missing"
        elif first["type"] == "value_error":
            problem = f"{where} {first['msg'].removeprefix('Value error, ')}"
        elif first["loc"][-1:] == ("[key]",):  # a key of a mapping (a site's name): loc is (..., key, "[key]")
            problem = f"{_field(first['loc'][:-2])} has the key {shown}; {first['msg'].replace('Input', 'a key')}"
        else:
            problem = f"{where} is {shown}; {first['msg'].replace('Input should', 'it should')}"
        raise LookupFileError(f"{subject} is incomplete or malformed: {problem}.") from None


def _field(location: Sequence[str | int]) -> str:
    """``('blocks', 3, 'sites', 'q')`` as ``blocks[3].sites.q``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "the document"


def _shown(value: Any) -> str:
    """A value as the JSON file spells it (``"fifty"``, ``null``, ``true``), short: six digits, no long lists."""
    if isinstance(value, float):
        return f"{value:.6g}"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else {dict: "an object", list: "a list"}.get(type(value), "a long value")


def _is_sparsity(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value < 1.0


def _blocks_problem(document: _LookupDocument, site_weights: Sequence[Sequence[float]] | None) -> str | None:
    """The block count and indices: ``blocks[i].index == i`` for every ``i < model.n_blocks``."""
    n_blocks, blocks = document.model.n_blocks, document.blocks
    if n_blocks < 1:
        return f"model.n_blocks is {n_blocks}; a model has at least one block"
    if site_weights is not None and len(site_weights) != n_blocks:
        return f"model.n_blocks is {n_blocks}, but the model has {len(site_weights)} blocks; export one for this model"
    if len(blocks) != n_blocks:
        return f"blocks holds {len(blocks)} blocks for a model of {n_blocks} (model.n_blocks); it needs one per block"
    for position, block in enumerate(blocks):
        if block.index == position:
            continue
        earlier = next((b for b in range(position) if blocks[b].index == block.index), None)
        if earlier is not None:
            return (
                f"blocks[{position}].index is {block.index}, as is blocks[{earlier}].index; "
                f"each block index 0 to {n_blocks - 1} must appear exactly once"
            )
        return (
            f"blocks[{position}].index is {block.index}; blocks must be listed once each, by index 0 to "
            f"{n_blocks - 1}, in order"
        )
    return None


def _figures_problem(document: _LookupDocument) -> str | None:
    """The document-level numbers: the sparsify fraction, the recorded sparsities and the quantile levels."""
    fraction = document.sparsify_fraction
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        return f"sparsify_fraction is {_shown(fraction)}; it must be in (0, 1]"
    for key in ("target_sparsity", "achieved_sparsity"):
        value = getattr(document, key)
        if value is not None and not _is_sparsity(value):
            return f"{key} is {_shown(value)}; it must be a sparsity in [0, 1), or null if not recorded"
    levels = document.quantile_levels
    if levels is None:
        return None
    if len(levels) < 2:
        return f"quantile_levels holds {len(levels)} level(s); a quantile table needs at least two"
    for i, level in enumerate(levels):
        if not _is_sparsity(level) or (i > 0 and not level > levels[i - 1]):
            return f"quantile_levels[{i}] is {_shown(level)}; the levels must be strictly increasing, in [0, 1)"
    return None


def _block_problem(b: int, block: _BlockEntry, document: _LookupDocument) -> str | None:
    """One block's numbers: its sparsity, and every site's sparsity, threshold and quantile table."""
    if not _is_sparsity(block.sparsity):
        return f"blocks[{b}].sparsity is {_shown(block.sparsity)}; block sparsities must be in [0, 1)"
    for name in SITE_NAMES:
        where, site = f"blocks[{b}].sites.{name}", block.sites[name]
        if not _is_sparsity(site.sparsity):
            return f"{where}.sparsity is {_shown(site.sparsity)}; site sparsities must be in [0, 1)"
        if not (math.isfinite(site.threshold) and site.threshold >= 0.0):
            return f"{where}.threshold is {_shown(site.threshold)}; thresholds must be finite and non-negative"
        problem = _table_problem(f"{where}.quantiles", site.quantiles, document.quantile_levels)
        if problem is not None:
            return problem
    return None


def _table_problem(where: str, table: list[float] | None, levels: list[float] | None) -> str | None:
    """A site's quantile table (its thresholds at ``quantile_levels``): finite, non-negative, non-decreasing."""
    if table is None:
        return None  # a point is loaded with its own thresholds; interpolating needs the table (and says so)
    if levels is None:
        return f"{where} is given but quantile_levels is not; a quantile table needs its levels"
    if len(table) != len(levels):
        return f"{where} holds {len(table)} thresholds for {len(levels)} quantile_levels; it needs one per level"
    for i, value in enumerate(table):
        if not (math.isfinite(value) and value >= 0.0):
            return f"{where}[{i}] is {_shown(value)}; thresholds must be finite and non-negative"
        if i > 0 and value < table[i - 1] * (1.0 - _TABLE_SLACK):
            return (
                f"{where}[{i}] is {_shown(value)}, below {where}[{i - 1}] ({_shown(table[i - 1])}); "
                "a quantile table must be non-decreasing"
            )
    return None


def _means_problem(document: _LookupDocument, site_weights: Sequence[Sequence[float]] | None) -> str | None:
    """Every recorded mean against the mean of its parts: exact with the model's site weights, else bounds."""
    blocks = document.blocks
    for b, block in enumerate(blocks):
        sites = [block.sites[name].sparsity for name in SITE_NAMES]
        weights = None if site_weights is None else [float(w) for w in site_weights[b]]
        problem = _mean_problem(f"blocks[{b}].sparsity", block.sparsity, sites, weights, "its sites' sparsities")
        if problem is not None:
            return problem
    achieved, target = document.achieved_sparsity, document.target_sparsity
    if site_weights is None:  # the model level is the block-weighted mean of the blocks: between them
        parts, weights, label = [block.sparsity for block in blocks], None, "the block sparsities"
    else:
        parts = [block.sites[name].sparsity for block in blocks for name in SITE_NAMES]
        weights, label = [float(w) for row in site_weights for w in row], "every site's sparsity"
    if achieved is None:  # not recorded: the target itself is what the allocation must meet
        return None if target is None else _mean_problem("target_sparsity", target, parts, weights, label)
    problem = _mean_problem("achieved_sparsity", achieved, parts, weights, label)
    if problem is None and target is not None and abs(target - achieved) > LOOKUP_TOLERANCE:
        problem = (
            f"target_sparsity is {_shown(target)}, but achieved_sparsity is {_shown(achieved)}; an allocation "
            f"must meet its target within {LOOKUP_TOLERANCE:g}"
        )
    return problem


def _mean_problem(where: str, value: float, parts: list[float], weights: list[float] | None, label: str) -> str | None:
    """``value`` against the weighted mean of ``parts`` (within :data:`LOOKUP_TOLERANCE`), or their range without
    weights."""
    if weights is not None:
        mean = math.fsum(p * w for p, w in zip(parts, weights, strict=True)) / math.fsum(weights)
        if abs(value - mean) > LOOKUP_TOLERANCE:
            return (
                f"{where} is {_shown(value)}, but the parameter-weighted mean of {label} is {_shown(mean)}; "
                f"they must agree within {LOOKUP_TOLERANCE:g}"
            )
        return None
    low, high = min(parts), max(parts)
    if not low - LOOKUP_TOLERANCE <= value <= high + LOOKUP_TOLERANCE:
        return (
            f"{where} is {_shown(value)}, outside the range of {label} ({_shown(low)} to {_shown(high)}), "
            "of which it is the parameter-weighted mean"
        )
    return None
