"""What the search needs beyond a sparse model: the model-level sparsity constraint, the dense reference
and the KL objective, the trial attributes stored on Optuna trials, and the samplers
(:mod:`allocator.search.samplers`).

Public names are imported on first use (``__getattr__``), so importing the package stays light.
"""

from __future__ import annotations

from allocator._lazy import lazy_attributes

# Public name -> module that defines it.
_LAZY: dict[str, str] = {
    "OPTUNA_VERSIONS": "allocator.search._optuna_internals",
    "is_multi_objective": "allocator.search._optuna_internals",
    "rdb_storage": "allocator.search._optuna_internals",
    "set_trial_state": "allocator.search._optuna_internals",
    "set_trial_system_attr": "allocator.search._optuna_internals",
    "set_trial_user_attr": "allocator.search._optuna_internals",
    "stale_trial_ids": "allocator.search._optuna_internals",
    "study_id": "allocator.search._optuna_internals",
    "study_storage": "allocator.search._optuna_internals",
    "trial_id": "allocator.search._optuna_internals",
    "trial_system_attrs": "allocator.search._optuna_internals",
    "trial_tables": "allocator.search._optuna_internals",
    "ConstraintSpace": "allocator.search._constraint",
    "maximin_order": "allocator.search._constraint",
    "Evaluation": "allocator.search._objective",
    "OBJECTIVES": "allocator.search._objective",
    "Objective": "allocator.search._objective",
    "batch_nll": "allocator.search._objective",
    "evaluate_tokens": "allocator.search._objective",
    "DEFAULT_TOP_K": "allocator.search._reference",
    "DenseReference": "allocator.search._reference",
    "REFERENCE_FORMAT": "allocator.search._reference",
    "compute_reference": "allocator.search._reference",
    "full_kl": "allocator.search._reference",
    "kl_to_reference": "allocator.search._reference",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
