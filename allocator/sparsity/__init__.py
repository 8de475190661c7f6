"""Making a model sparse: activation scores, score histograms, the dense calibration pass, the sparsifier
hooks, thresholds calibrated under the sparse model, and the split rules (uniform, TEAL's greedy
tables, blend) that turn one sparsity per block into one per site.

Public names are imported on first use (``__getattr__``), so importing the package stays light.
"""

from __future__ import annotations

from allocator._lazy import lazy_attributes

# Public name -> module that defines it.
_LAZY: dict[str, str] = {
    "CALIBRATION_FORMAT": "allocator.sparsity._calibration",
    "Calibration": "allocator.sparsity._calibration",
    "calibrate": "allocator.sparsity._calibration",
    "GREEDY_FORMAT": "allocator.sparsity._greedy",
    "GreedySplit": "allocator.sparsity._greedy",
    "GreedyTable": "allocator.sparsity._greedy",
    "build_greedy_table": "allocator.sparsity._greedy",
    "teal_step": "allocator.sparsity._greedy",
    "GREEDY_METHODS": "allocator.sparsity._greedy",
    "ERROR_NORMS": "allocator.sparsity._greedy_blocks",
    "capture_block_inputs": "allocator.sparsity._blocks",
    "ScoreHistogram": "allocator.sparsity._histogram",
    "key_counts": "allocator.sparsity._histogram",
    "SCORE_KINDS": "allocator.sparsity._scores",
    "Score": "allocator.sparsity._scores",
    "BlendSplit": "allocator.sparsity._sparse_model",
    "SparseModel": "allocator.sparsity._sparse_model",
    "SplitRule": "allocator.sparsity._sparse_model",
    "UniformSplit": "allocator.sparsity._sparse_model",
    "RULES": "allocator.sparsity._sparsifier",
    "Sparsifiers": "allocator.sparsity._sparsifier",
    "calibrate_allocation": "allocator.sparsity._thresholds",
    "CALIBRATION_METHODS": "allocator.sparsity._thresholds",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
