"""sparsealloc's model-side library, in subpackages named after what they are; nothing here knows about databases.

- :mod:`allocator.model`: loading causal LMs, device and dtype, the adapters that find blocks and sites.
- :mod:`allocator.data`: text sources and their split into the four data roles.
- :mod:`allocator.sparsity`: scores, histograms, calibration, sparsifier hooks, thresholds under the sparse
  model, and the split rules (uniform, TEAL's greedy tables, blend).
- :mod:`allocator.search`: the constraint, the dense reference and the KL objective, the trial attributes,
  and the samplers (:mod:`allocator.search.samplers`).
- :mod:`allocator.export`: the lookup and its loader, frontier exports, TEAL's files, atomic writes.
- :mod:`allocator.integrations`: other tools reading our exports (NNCF); :mod:`allocator.testing`: helpers
  for tests and benchmarks; :mod:`allocator.errors`, :mod:`allocator.paths` and :mod:`allocator.schema`: the
  errors, the checks of user-given paths, and the strict pydantic bases, that every layer uses.

The imports between subpackages run one way (model, data → sparsity → search, export → integrations;
``tests/test_architecture.py`` checks it). This package re-exports every subpackage's public names, so
``from allocator import load_lookup`` works as before; other packages (and the tests and benchmarks) use
only public names, never a private module (``make lint`` refuses such an import). Heavy modules (torch,
transformers, botorch) are imported on first use of a name, so ``import allocator`` and the command line's
``--help`` stay fast.
"""

from __future__ import annotations

from allocator._lazy import lazy_attributes
from allocator.errors import (
    DataSourceError,
    InfeasibleConstraintError,
    InputError,
    LookupFileError,
    ModelSourceError,
    OutputError,
    SparseallocError,
    UnsupportedArchitectureError,
)

# Public name -> module that defines it; imported lazily by __getattr__.
_LAZY: dict[str, str] = {
    "SITE_NAMES": "allocator.model._adapters",
    "SUPPORTED_ARCHITECTURES": "allocator.model._adapters",
    "ModelAdapter": "allocator.model._adapters",
    "Site": "allocator.model._adapters",
    "INPUT_GROUPS": "allocator.model._adapters",
    "DTYPES": "allocator.model._device",
    "Placement": "allocator.model._device",
    "resolve_placement": "allocator.model._device",
    "EMBEDDED_MODELS": "allocator.model._loading",
    "LoadedModel": "allocator.model._loading",
    "ModelShape": "allocator.model._loading",
    "check_model_source": "allocator.model._loading",
    "check_seq_len": "allocator.model._loading",
    "load_model": "allocator.model._loading",
    "model_shape": "allocator.model._loading",
    "model_fingerprint": "allocator.model._loading",
    "EMBEDDED_CORPORA": "allocator.data._sources",
    "TextCorpus": "allocator.data._sources",
    "ROLES": "allocator.data._sources",
    "TokenSets": "allocator.data._sources",
    "check_text_source": "allocator.data._sources",
    "load_text": "allocator.data._sources",
    "make_token_sets": "allocator.data._sources",
    "SCORE_KINDS": "allocator.sparsity._scores",
    "Score": "allocator.sparsity._scores",
    "ScoreHistogram": "allocator.sparsity._histogram",
    "key_counts": "allocator.sparsity._histogram",
    "CALIBRATION_FORMAT": "allocator.sparsity._calibration",
    "Calibration": "allocator.sparsity._calibration",
    "calibrate": "allocator.sparsity._calibration",
    "RULES": "allocator.sparsity._sparsifier",
    "Sparsifiers": "allocator.sparsity._sparsifier",
    "calibrate_allocation": "allocator.sparsity._thresholds",
    "DEFAULT_TOP_K": "allocator.search._reference",
    "DenseReference": "allocator.search._reference",
    "REFERENCE_FORMAT": "allocator.search._reference",
    "compute_reference": "allocator.search._reference",
    "full_kl": "allocator.search._reference",
    "kl_to_reference": "allocator.search._reference",
    "SparseModel": "allocator.sparsity._sparse_model",
    "SplitRule": "allocator.sparsity._sparse_model",
    "UniformSplit": "allocator.sparsity._sparse_model",
    "BlendSplit": "allocator.sparsity._sparse_model",
    "GREEDY_FORMAT": "allocator.sparsity._greedy",
    "GreedySplit": "allocator.sparsity._greedy",
    "GreedyTable": "allocator.sparsity._greedy",
    "build_greedy_table": "allocator.sparsity._greedy",
    "teal_step": "allocator.sparsity._greedy",
    "capture_block_inputs": "allocator.sparsity._blocks",
    "LOOKUP_FORMAT": "allocator.export._lookup",
    "build_lookup": "allocator.export._lookup",
    "check_export_target": "allocator.export._lookup",
    "check_lookup_model": "allocator.export._lookup",
    "load_lookup": "allocator.export._loader",
    "read_lookup": "allocator.export._lookup",
    "write_lookup": "allocator.export._lookup",
    "lookup_thresholds": "allocator.export._lookup",
    "write_lookup_file": "allocator.export._lookup",
    "LOOKUP_TOLERANCE": "allocator.export._lookup_checks",
    "check_lookup": "allocator.export._lookup_checks",
    "FRONTIER_FORMAT": "allocator.export._frontier_lookup",
    "QUANTILE_LEVELS": "allocator.export._frontier_lookup",
    "build_frontier_index": "allocator.export._frontier_lookup",
    "frontier_point": "allocator.export._frontier_lookup",
    "interpolate_lookups": "allocator.export._frontier_lookup",
    "is_frontier": "allocator.export._frontier_lookup",
    "point_directory": "allocator.export._frontier_lookup",
    "quantile_table": "allocator.export._frontier_lookup",
    "read_frontier": "allocator.export._frontier_lookup",
    "write_teal_files": "allocator.export._teal",
    "write_teal_frontier_files": "allocator.export._teal",
    "Evaluation": "allocator.search._objective",
    "OBJECTIVES": "allocator.search._objective",
    "Objective": "allocator.search._objective",
    "batch_nll": "allocator.search._objective",
    "evaluate_tokens": "allocator.search._objective",
    "ConstraintSpace": "allocator.search._constraint",
    "maximin_order": "allocator.search._constraint",
    "atomic_write_bytes": "allocator.export._files",
    "atomic_write_directory": "allocator.export._files",
}

__all__ = [
    "DataSourceError",
    "InfeasibleConstraintError",
    "InputError",
    "LookupFileError",
    "ModelSourceError",
    "OutputError",
    "SparseallocError",
    "UnsupportedArchitectureError",
    *_LAZY,
]

__getattr__ = lazy_attributes(__name__, _LAZY)
