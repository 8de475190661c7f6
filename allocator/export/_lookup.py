"""The lookup table: the exported allocation, and the loader that installs it on a model for inference.

``lookup.json`` (format ``sparsealloc.lookup/v1``) holds the model's identity (name, source, architecture,
block count, fingerprint of config + weight shapes), the score kind, the sparsify fraction, the target and
achieved model-level sparsity, and per block its sparsity and per site ``{sparsity, threshold}``
(thresholds in score units; for ``weight_aware`` the column norms are recomputed from the model's own
weights at load time, with the norm order recorded), plus calibration and study provenance. It is written
atomically with the TEAL-compatible files beside it (see :mod:`allocator.export._teal`).

A lookup written for a frontier point also holds, per site, ``quantiles``: the site's thresholds at each
sparsity of the top-level ``quantile_levels`` (from that point's calibration under the sparse model), which
is what interpolating between frontier points needs (see :mod:`allocator.export._frontier_lookup`).

The loader refuses a lookup of another format version, another architecture or another model
(fingerprint) with one sentence, and never unpickles anything: the lookup is JSON. Every reader (this
module's, the frontier's, ``sparsealloc apply``, the NNCF integration) also refuses a lookup that type-checks
but means nothing (duplicate block indices, a block sparsity that is not its sites' weighted mean, a
decreasing quantile table…) through one check, :func:`allocator.export._lookup_checks.check_lookup`.
The loader that installs a lookup (single or frontier) on a model is :func:`allocator.export._loader.load_lookup`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from allocator.errors import LookupFileError, OutputError
from allocator.export._files import atomic_write_directory
from allocator.export._lookup_checks import check_lookup, check_lookup_structure
from allocator.model import SITE_NAMES, ModelAdapter, model_fingerprint
from allocator.paths import OutputKind, check_output_directory, path_kind, path_problem
from allocator.sparsity import Score

LOOKUP_FORMAT = "sparsealloc.lookup/v1"
LOOKUP_FILE = "lookup.json"


def tool_version() -> str:
    """The installed sparsealloc version, written into lookup files so that a file says which release made it."""
    try:
        return version("sparsealloc")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def build_lookup(
    *,
    model: dict[str, Any],
    score: Score,
    sparsify_fraction: float,
    split: str,
    target: float,
    block_sparsities: torch.Tensor,
    site_sparsities: torch.Tensor,
    thresholds: torch.Tensor,
    site_weights: torch.Tensor,
    calibration: dict[str, Any],
    study: dict[str, Any],
    quantile_levels: Sequence[float] | None = None,
    quantiles: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The lookup document for one allocation (tensors: ``n_blocks``, and ``n_blocks x 7`` for sites).

    ``quantiles`` (a ``n_blocks x 7 x L`` tensor: each site's thresholds at the ``L`` sparsities
    ``quantile_levels``) is given for a frontier point only; a single-target lookup holds no table.
    """
    achieved = float((site_sparsities * site_weights).sum() / site_weights.sum())
    blocks = []
    for b in range(block_sparsities.numel()):
        sites = {
            name: {"sparsity": float(site_sparsities[b, i]), "threshold": float(thresholds[b, i])}
            for i, name in enumerate(SITE_NAMES)
        }
        if quantiles is not None:
            for i, name in enumerate(SITE_NAMES):
                sites[name]["quantiles"] = [float(q) for q in quantiles[b, i]]
        blocks.append({"index": b, "sparsity": float(block_sparsities[b]), "sites": sites})
    table = {} if quantiles is None else {"quantile_levels": [float(level) for level in quantile_levels or ()]}
    return {
        "format": LOOKUP_FORMAT,
        "model": model,
        "score": {
            **score.describe(),
            "column_norms": "recomputed from the model's weights at load time"
            if score.kind == "weight_aware"
            else None,
        },
        "sparsify_fraction": sparsify_fraction,
        "split": split,
        "target_sparsity": target,
        "achieved_sparsity": achieved,
        **table,
        "blocks": blocks,
        "calibration": calibration,
        "study": study,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool_version": tool_version(),
    }


#: What an export directory holds; an existing directory holding anything else is never replaced.
EXPORT_ENTRIES = frozenset({LOOKUP_FILE, "histograms", "lookup", "block_sparsities.json", "nncf.json"})
#: A frontier export also holds one directory per target, named with this prefix (``target-0.40``).
POINT_PREFIX = "target-"


#: How an export directory is recognised (its ``lookup.json``), so that only an earlier export is replaced.
EXPORT = OutputKind(
    noun="export",
    marker=LOOKUP_FILE,
    formats=("sparsealloc.lookup/", "sparsealloc.frontier/"),
    entries=EXPORT_ENTRIES,
    prefixes=(POINT_PREFIX,),
)


def check_export_target(directory: str | Path) -> Path:
    """The absolute export directory, if it may be written: new, empty, or an earlier export.

    An export replaces its directory atomically, so a directory holding anything but an earlier export
    (the study's own database, say) is refused rather than deleted, and so are the working directory or one
    of its parents and a place this user may not write (see :func:`allocator.paths.check_output_directory`).
    """
    return check_output_directory(directory, EXPORT)


def write_lookup(directory: str | Path, lookup: dict[str, Any], *, extra: Any = None) -> Path:
    """Write ``lookup.json`` (and whatever ``extra(staging_dir)`` writes) to ``directory`` atomically.

    Returns the absolute directory. Refuses a directory that is not new, empty or an earlier export
    (:func:`check_export_target`); an unwritable place is one sentence, with nothing left behind.
    """
    target = check_export_target(directory)

    def fill(staging: Path) -> None:
        write_lookup_file(staging, lookup)
        if extra is not None:
            extra(staging)

    try:
        atomic_write_directory(target, fill)
    except OSError as error:
        raise OutputError(f"Cannot write the export to {str(target)!r}: {error.strerror or error}.") from error
    return target


def write_lookup_file(directory: Path, lookup: dict[str, Any]) -> None:
    """Write ``lookup.json`` into ``directory`` (not atomically: for a staging directory, or a frontier point's
    subdirectory inside one)."""
    (directory / LOOKUP_FILE).write_text(json.dumps(lookup, indent=2, allow_nan=False) + "\n")


def lookup_file(path: str | Path) -> Path:
    """The ``lookup.json`` of ``path`` (a directory holding one, or the file itself)."""
    path = Path(path)
    kind = path_kind(path, f"Lookup {str(path)!r} cannot be read", error=LookupFileError)
    return path / LOOKUP_FILE if kind == "directory" else path


def read_json_document(file: Path) -> dict[str, Any]:
    """The JSON object in ``file``; one sentence if it is missing, unreadable, corrupted or not an object."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LookupFileError(f"No lookup at {str(file)!r}.") from None
    except UnicodeDecodeError as error:
        raise LookupFileError(f"Lookup {str(file)!r} cannot be read: {error}.") from None
    except OSError as error:
        raise LookupFileError(f"Lookup {str(file)!r} cannot be read: {path_problem(error)}.") from None
    try:
        lookup = json.loads(text)
    except json.JSONDecodeError as error:
        raise LookupFileError(
            f"Lookup {str(file)!r} is corrupted or truncated ({error.msg} at line {error.lineno})."
        ) from None
    if not isinstance(lookup, dict):
        raise LookupFileError(f"Lookup {str(file)!r} is not a sparsealloc lookup.")
    return lookup


def read_lookup(path: str | Path) -> dict[str, Any]:
    """Read and validate a single-allocation lookup (a directory holding ``lookup.json``, or the file itself).

    A frontier export is refused here with one sentence: :func:`allocator.frontier_point` reads one.
    """
    file = lookup_file(path)
    lookup = read_json_document(file)
    found = lookup.get("format")
    if isinstance(found, str) and found.startswith("sparsealloc.frontier/"):
        raise LookupFileError(
            f"Lookup {str(file)!r} is a frontier of several allocations; read it at a sparsity with frontier_point."
        )
    if found != LOOKUP_FORMAT:
        raise LookupFileError(f"Lookup {str(file)!r} has format {found!r}; this sparsealloc reads {LOOKUP_FORMAT}.")
    check_lookup(lookup, f"Lookup {str(file)!r}")
    return lookup


def lookup_thresholds(lookup: dict[str, Any]) -> torch.Tensor:
    """The ``n_blocks x 7`` thresholds of a lookup, in score units."""
    return torch.tensor(
        [[block["sites"][name]["threshold"] for name in SITE_NAMES] for block in lookup["blocks"]], dtype=torch.float64
    )


def check_lookup_model(lookup: dict[str, Any], model: Any, *, subject: str = "The lookup") -> None:
    """Refuse a lookup that means nothing for ``model``: a malformed one, one for another architecture or
    another model (fingerprint), then one whose block count or weighted means disagree with the model's own
    site weights (:func:`allocator.export._lookup_checks.check_lookup`; ``subject`` starts its sentences)."""
    check_lookup_structure(lookup, subject)  # well-formed first, so that what follows reads a complete document
    expected = lookup["model"]
    architecture = getattr(getattr(model, "config", None), "model_type", None)
    if architecture != expected.get("architecture"):
        raise LookupFileError(
            f"The lookup is for a {expected.get('architecture')!r} model, not {architecture!r}; "
            "export one for this model."
        )
    fingerprint = model_fingerprint(model)
    if fingerprint != expected.get("fingerprint"):
        raise LookupFileError(
            f"The lookup was made for another model ({expected.get('name')!r}, fingerprint "
            f"{str(expected.get('fingerprint'))[:12]}), not this one (fingerprint {fingerprint[:12]})."
        )
    check_lookup(lookup, subject, site_weights=ModelAdapter(model).site_weights().tolist())


def lookup_subject(path: str | Path, lookup: dict[str, Any]) -> str:
    """How sentences about ``lookup`` (read from ``path`` by :func:`allocator.frontier_point`) name it: its
    file, or for a frontier export its index and the sparsity loaded."""
    frontier = lookup.get("frontier")
    if not isinstance(frontier, dict):
        return f"Lookup {str(lookup_file(path))!r}"
    return f"Lookup {str(lookup_file(path))!r} at sparsity {float(lookup['target_sparsity']):g}"
