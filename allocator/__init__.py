"""sparsealloc's model-side library: models, data, sparsifiers, calibration, objective, constraint, samplers.

Nothing here knows about databases. The public names are listed in ``__all__``; other packages (and the
tests and benchmarks) use only these, never a private module (``make lint`` refuses such an import).
Heavy modules (torch, transformers, botorch) are imported on first use of a name, so ``import allocator``
and the command line's ``--help`` stay fast. The samplers live in :mod:`allocator.samplers`, the trial
attributes in :mod:`allocator.trial_attributes`, the errors in :mod:`allocator.errors`, and the checks of
the paths a user gives (one sentence, never a traceback) in :mod:`allocator.paths`.
"""

from __future__ import annotations

import importlib
from typing import Any

from allocator.errors import (
    DataSourceError,
    InfeasibleConstraintError,
    InputError,
    LookupFileError,
    ModelSourceError,
    OutputError,
    SparseallocError,
    StorageError,
    UnsupportedArchitectureError,
)

# Public name -> module that defines it; imported lazily by __getattr__.
_LAZY: dict[str, str] = {
    "SITE_NAMES": "allocator._adapters",
    "SUPPORTED_ARCHITECTURES": "allocator._adapters",
    "ModelAdapter": "allocator._adapters",
    "Site": "allocator._adapters",
    "INPUT_GROUPS": "allocator._adapters",
    "DTYPES": "allocator._device",
    "Placement": "allocator._device",
    "resolve_placement": "allocator._device",
    "EMBEDDED_MODELS": "allocator._models",
    "LoadedModel": "allocator._models",
    "ModelShape": "allocator._models",
    "check_model_source": "allocator._models",
    "check_seq_len": "allocator._models",
    "load_model": "allocator._models",
    "model_shape": "allocator._models",
    "model_fingerprint": "allocator._models",
    "EMBEDDED_CORPORA": "allocator._data",
    "TextCorpus": "allocator._data",
    "ROLES": "allocator._data",
    "TokenSets": "allocator._data",
    "check_text_source": "allocator._data",
    "load_text": "allocator._data",
    "make_token_sets": "allocator._data",
    "SCORE_KINDS": "allocator._scores",
    "Score": "allocator._scores",
    "ScoreHistogram": "allocator._histogram",
    "key_counts": "allocator._histogram",
    "CALIBRATION_FORMAT": "allocator._calibration",
    "Calibration": "allocator._calibration",
    "calibrate": "allocator._calibration",
    "RULES": "allocator._sparsifier",
    "Sparsifiers": "allocator._sparsifier",
    "calibrate_allocation": "allocator._thresholds",
    "DEFAULT_TOP_K": "allocator._reference",
    "DenseReference": "allocator._reference",
    "REFERENCE_FORMAT": "allocator._reference",
    "compute_reference": "allocator._reference",
    "full_kl": "allocator._reference",
    "kl_to_reference": "allocator._reference",
    "SparseModel": "allocator._sparse_model",
    "SplitRule": "allocator._sparse_model",
    "UniformSplit": "allocator._sparse_model",
    "BlendSplit": "allocator._sparse_model",
    "GREEDY_FORMAT": "allocator._greedy",
    "GreedySplit": "allocator._greedy",
    "GreedyTable": "allocator._greedy",
    "build_greedy_table": "allocator._greedy",
    "capture_block_inputs": "allocator._greedy",
    "LOOKUP_FORMAT": "allocator._lookup",
    "build_lookup": "allocator._lookup",
    "check_export_target": "allocator._lookup",
    "check_lookup_model": "allocator._lookup",
    "load_lookup": "allocator._lookup",
    "read_lookup": "allocator._lookup",
    "write_lookup": "allocator._lookup",
    "lookup_thresholds": "allocator._lookup",
    "write_lookup_file": "allocator._lookup",
    "LOOKUP_TOLERANCE": "allocator._lookup_checks",
    "check_lookup": "allocator._lookup_checks",
    "FRONTIER_FORMAT": "allocator._frontier_lookup",
    "QUANTILE_LEVELS": "allocator._frontier_lookup",
    "build_frontier_index": "allocator._frontier_lookup",
    "frontier_point": "allocator._frontier_lookup",
    "interpolate_lookups": "allocator._frontier_lookup",
    "is_frontier": "allocator._frontier_lookup",
    "point_directory": "allocator._frontier_lookup",
    "quantile_table": "allocator._frontier_lookup",
    "read_frontier": "allocator._frontier_lookup",
    "write_teal_files": "allocator._teal",
    "write_teal_frontier_files": "allocator._teal",
    "Evaluation": "allocator._objective",
    "OBJECTIVES": "allocator._objective",
    "Objective": "allocator._objective",
    "batch_nll": "allocator._objective",
    "evaluate_tokens": "allocator._objective",
    "ConstraintSpace": "allocator._constraint",
    "maximin_order": "allocator._constraint",
    "atomic_write_bytes": "allocator._files",
    "atomic_write_directory": "allocator._files",
}

__all__ = [
    "DataSourceError",
    "InfeasibleConstraintError",
    "InputError",
    "LookupFileError",
    "ModelSourceError",
    "OutputError",
    "SparseallocError",
    "StorageError",
    "UnsupportedArchitectureError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'allocator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
