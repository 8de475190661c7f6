"""The loader: install an exported allocation (a single lookup, or a frontier export at one sparsity) on a model.

It sits above both formats, so the single lookup's module and the frontier's (which reads single lookups
through it) do not import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allocator.export._frontier_lookup import frontier_point
from allocator.export._lookup import check_lookup_model, lookup_subject, lookup_thresholds
from allocator.model import ModelAdapter
from allocator.sparsity import Score, Sparsifiers


def load_lookup(model: Any, path: str | Path, sparsity: float | None = None) -> Sparsifiers:
    """Install a lookup's thresholds on ``model`` (a transformers causal LM); returns the installed hooks.

    ``sparsity`` picks the model-level sparsity: for a single-allocation lookup it must be None or its
    target; a frontier export needs it (unless it holds one point) and loads the point at that target, or
    interpolates between the two neighbouring points (:func:`allocator.frontier_point`). The result owns
    every hook: call ``.remove()`` (or use it as a context manager) to make the model dense again. Refuses a
    lookup of another format version, architecture or model fingerprint, and one that means nothing for this
    model (:func:`check_lookup_model`), each in one sentence naming the field.
    """
    lookup = frontier_point(path, sparsity)
    check_lookup_model(lookup, model, subject=lookup_subject(path, lookup))
    adapter = ModelAdapter(model)
    sparsifiers = Sparsifiers(
        adapter, score=Score.from_description(lookup["score"]), sparsify_fraction=float(lookup["sparsify_fraction"])
    )
    sparsifiers.set_thresholds(lookup_thresholds(lookup))
    sparsifiers.__enter__()
    return sparsifiers
