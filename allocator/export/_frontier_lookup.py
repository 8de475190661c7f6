"""Frontier lookups: one export holding a study's chosen allocation at each of several targets, and the
loader's pick (or interpolation) of one model-level sparsity among them.

Layout of a frontier export ``DIR`` (see ``studies.export_study``):

- ``DIR/lookup.json`` (format ``sparsealloc.frontier/v1``): the index. The model's identity (checked by the
  loader as a single lookup's is), score, sparsify fraction, split, and per point (increasing targets):
  ``{target, directory, achieved_sparsity, trial, validation, heldout}``; plus study provenance, creation
  time and tool version.
- ``DIR/target-0.40/`` …: per target a complete single-target lookup (``lookup.json``, TEAL files,
  ``nncf.json``), as a single-target study's export writes it, whose ``lookup.json`` also holds every site's
  quantile table (its thresholds at the sparsities ``quantile_levels``, :data:`QUANTILE_LEVELS`).
- ``DIR/histograms/``, ``DIR/lookup/layer-{i}/results.csv``: TEAL-compatible files of the whole frontier
  (see :func:`allocator.write_teal_frontier_files`).

Interpolation at a sparsity ``s`` between neighbouring targets ``t_a < s < t_b``: with
``λ = (s − t_a) / (t_b − t_a)``, every block sparsity and every site sparsity is ``(1 − λ)·a + λ·b``. Both
points meet their targets (``Σ n_site s_site = t·Σ n_site``) and the constraint is linear, so the combination
has model-level sparsity ``(1 − λ)·t_a + λ·t_b = s`` exactly. Each site's threshold is
``(1 − λ)·θ_a(s_site) + λ·θ_b(s_site)``, where ``θ_a`` is point a's quantile table linearly interpolated at the
interpolated site sparsity (clamped to the table's last level, 0.99). At a target itself the point's own
lookup is loaded unchanged (its thresholds calibrated exactly there, not read from the table).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator

from allocator.errors import InputError, LookupFileError
from allocator.export._lookup import (
    LOOKUP_FORMAT,
    POINT_PREFIX,
    lookup_file,
    read_json_document,
    read_lookup,
    tool_version,
)
from allocator.export._lookup_checks import check_lookup
from allocator.model import SITE_NAMES
from allocator.schema import StrictDocument

FRONTIER_FORMAT = "sparsealloc.frontier/v1"
#: The site sparsities of every frontier point's quantile table: 0, 0.025, …, 0.975, and 0.99.
QUANTILE_LEVELS: tuple[float, ...] = (*(round(k * 0.025, 3) for k in range(40)), 0.99)
#: How close a requested sparsity must be to a target to load that point itself.
_AT_TARGET = 1e-9


def point_directory(target: float) -> str:
    """The subdirectory of a frontier point: ``target-0.40`` (more digits where two places do not suffice)."""
    text = f"{target:.2f}" if abs(target - round(target, 2)) < 1e-9 else f"{target:.6g}"
    return f"{POINT_PREFIX}{text}"


def build_frontier_index(
    *, points: list[dict[str, Any]], model: dict[str, Any], details: dict[str, Any], study: dict[str, Any]
) -> dict[str, Any]:
    """The index document of a frontier export.

    ``points``: one ``{target, directory, achieved_sparsity, trial, validation, heldout}`` per point, in any
    order (stored by increasing target); ``details``: the lookups' shared ``score``, ``sparsify_fraction``
    and ``split`` (and a ``teal`` note); ``study``: provenance.
    """
    from datetime import UTC, datetime

    return {
        "format": FRONTIER_FORMAT,
        "model": model,
        **details,
        "points": sorted(points, key=lambda point: point["target"]),
        "study": study,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool_version": tool_version(),
    }


class _PointEntry(StrictDocument):
    target: float = Field(gt=0.0, lt=1.0, allow_inf_nan=False)
    directory: str = Field(pattern=r"^target-[0-9.e-]+$")


class _FrontierModel(StrictDocument):
    name: str
    architecture: str
    n_blocks: int = Field(ge=1)
    fingerprint: str


class _FrontierDocument(StrictDocument):
    format: Literal["sparsealloc.frontier/v1"]
    model: _FrontierModel
    points: list[_PointEntry] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _increasing(cls, points: list[_PointEntry]) -> list[_PointEntry]:
        targets = [point.target for point in points]
        if any(after <= before for before, after in itertools.pairwise(targets)):
            raise ValueError("the points' targets are not strictly increasing")
        return points


def is_frontier(path: str | Path) -> bool:
    """Whether ``path`` (a directory or its ``lookup.json``) is a frontier export's index."""
    try:
        found = read_json_document(lookup_file(path)).get("format")
    except LookupFileError:
        return False
    return isinstance(found, str) and found.startswith("sparsealloc.frontier/")


def read_frontier(path: str | Path) -> dict[str, Any]:
    """Read and validate a frontier export's index (a directory holding ``lookup.json``, or the file)."""
    file = lookup_file(path)
    index = read_json_document(file)
    found = index.get("format")
    if found != FRONTIER_FORMAT:
        raise LookupFileError(f"Lookup {str(file)!r} has format {found!r}; this sparsealloc reads {FRONTIER_FORMAT}.")
    try:
        _FrontierDocument.model_validate(index)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise LookupFileError(f"Lookup {str(file)!r} is incomplete or malformed (`{where}`: {message}).") from None
    return index


def frontier_point(path: str | Path, sparsity: float | None = None) -> dict[str, Any]:
    """The single-allocation lookup document to install from ``path`` at model-level ``sparsity``.

    A single-target lookup is returned as read when ``sparsity`` is None or its target. For a frontier
    export, ``sparsity`` is needed (unless it holds one point) and must lie within its targets: at a target
    the point's own lookup is returned with a ``frontier`` entry added, between two targets the interpolation
    of the two neighbouring points (see the module docstring), whose ``frontier`` entry names both and ``λ``.
    Every other case is one sentence (:class:`~allocator.InputError` for the sparsity,
    :class:`~allocator.LookupFileError` for the files). Every point read, and the interpolation, pass
    :func:`allocator.export._lookup_checks.check_lookup` (without the model's site weights: bounds on the means).
    """
    if sparsity is not None and (isinstance(sparsity, bool) or not 0.0 < float(sparsity) < 1.0):
        raise InputError(f"The value of `sparsity` should be in (0, 1), got {sparsity}.")
    if not is_frontier(path):
        return _single(path, sparsity)
    index = read_frontier(path)
    root = lookup_file(path).parent
    targets = [float(point["target"]) for point in index["points"]]
    span = f"[{targets[0]:g}, {targets[-1]:g}]"
    if sparsity is None:
        if len(targets) > 1:
            raise InputError(
                f"Lookup {str(root)!r} is a frontier of {len(targets)} allocations; give a sparsity in {span}."
            )
        sparsity = targets[0]
    sparsity = float(sparsity)
    if not targets[0] - _AT_TARGET <= sparsity <= targets[-1] + _AT_TARGET:
        raise InputError(f"Sparsity {sparsity:g} is outside the frontier of lookup {str(root)!r}, which spans {span}.")
    exact = next((i for i, t in enumerate(targets) if abs(t - sparsity) <= _AT_TARGET), None)
    if exact is not None:
        lookup = _point(root, index, exact)
        return {**lookup, "frontier": {"lookup": str(root), "targets": [targets[exact]], "weight": 0.0}}
    upper = next(i for i, t in enumerate(targets) if t > sparsity)
    weight = (sparsity - targets[upper - 1]) / (targets[upper] - targets[upper - 1])
    lookup = interpolate_lookups(_point(root, index, upper - 1), _point(root, index, upper), weight)
    lookup["target_sparsity"] = sparsity
    check_lookup(lookup, f"Lookup {str(lookup_file(path))!r} at sparsity {sparsity:g}")  # points checked: a guard
    lookup["frontier"] = {"lookup": str(root), "targets": [targets[upper - 1], targets[upper]], "weight": weight}
    return lookup


def _single(path: str | Path, sparsity: float | None) -> dict[str, Any]:
    lookup = read_lookup(path)
    target = lookup.get("target_sparsity")
    if sparsity is not None and (not isinstance(target, float | int) or abs(float(target) - sparsity) > _AT_TARGET):
        raise InputError(
            f"Lookup {str(lookup_file(path))!r} holds one allocation, at sparsity {target}; give no sparsity "
            f"or {target}, not {sparsity:g}."
        )
    return lookup


def _point(root: Path, index: dict[str, Any], position: int) -> dict[str, Any]:
    """Point ``position``'s lookup, checked against the index: the same model (and block count) and its target."""
    entry = index["points"][position]
    lookup = read_lookup(root / entry["directory"])
    if lookup["model"]["fingerprint"] != index["model"]["fingerprint"]:
        raise LookupFileError(
            f"Lookup {str(root / entry['directory'])!r} is for another model than its frontier's index."
        )
    if lookup["model"]["n_blocks"] != index["model"]["n_blocks"]:
        raise LookupFileError(
            f"Lookup {str(lookup_file(root / entry['directory']))!r}: model.n_blocks is "
            f"{lookup['model']['n_blocks']}, but its frontier's index has {index['model']['n_blocks']}."
        )
    target = lookup.get("target_sparsity")
    if not isinstance(target, float | int) or abs(float(target) - float(entry["target"])) > _AT_TARGET:
        raise LookupFileError(
            f"Lookup {str(root / entry['directory'])!r} has target {target}, not its index's {entry['target']}."
        )
    return lookup


def quantile_table(lookup: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A frontier point's ``(levels, table)``: the ``L`` increasing levels and the ``n_blocks x 7 x L``
    thresholds of every site at them; one sentence if the lookup has no valid table."""
    try:
        levels = np.asarray(lookup["quantile_levels"], dtype=np.float64)
        table = np.asarray(
            [[block["sites"][name]["quantiles"] for name in SITE_NAMES] for block in lookup["blocks"]],
            dtype=np.float64,
        )
    except (KeyError, TypeError, ValueError):
        raise LookupFileError(
            "A frontier point's lookup has no valid quantile table of thresholds to interpolate with."
        ) from None
    valid = (
        levels.ndim == 1
        and levels.size >= 2
        and table.shape == (len(lookup["blocks"]), len(SITE_NAMES), levels.size)
        and bool(np.all(np.diff(levels) > 0) and np.all(np.isfinite(table)) and np.all(table >= 0))
    )
    if not valid:
        raise LookupFileError("A frontier point's quantile table of thresholds is malformed.")
    return levels, table


def interpolate_lookups(a: dict[str, Any], b: dict[str, Any], weight: float) -> dict[str, Any]:
    """The lookup ``(1 − weight)·a + weight·b`` of two frontier points (``0 <= weight <= 1``): block and site
    sparsities combined linearly, each site's threshold the same combination of both points' quantile
    tables read at the combined site sparsity. Its ``target_sparsity`` is the combination of theirs."""
    if a["model"]["fingerprint"] != b["model"]["fingerprint"] or a["score"] != b["score"]:
        raise LookupFileError("Two points of the frontier differ in their model or score.")
    (levels_a, table_a), (levels_b, table_b) = quantile_table(a), quantile_table(b)
    blocks = []
    for position, (block_a, block_b) in enumerate(zip(a["blocks"], b["blocks"], strict=True)):
        sites = {}
        for i, name in enumerate(SITE_NAMES):
            site = (1 - weight) * block_a["sites"][name]["sparsity"] + weight * block_b["sites"][name]["sparsity"]
            threshold_a = float(np.interp(site, levels_a, table_a[position, i]))
            threshold_b = float(np.interp(site, levels_b, table_b[position, i]))
            sites[name] = {"sparsity": site, "threshold": (1 - weight) * threshold_a + weight * threshold_b}
        sparsity = (1 - weight) * block_a["sparsity"] + weight * block_b["sparsity"]
        blocks.append({"index": position, "sparsity": sparsity, "sites": sites})
    combine = {
        key: (1 - weight) * float(a[key]) + weight * float(b[key]) for key in ("target_sparsity", "achieved_sparsity")
    }
    shared = {key: a[key] for key in ("model", "score", "sparsify_fraction", "split") if key in a}
    return {"format": LOOKUP_FORMAT, **shared, **combine, "blocks": blocks, "tool_version": tool_version()}
