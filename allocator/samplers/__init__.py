"""Optuna samplers that propose the whole block vector at once, on the model-level sparsity constraint.

``create_sampler(name, space=..., seed=...)`` builds one by name: ``uniform``, ``random``, ``tpe``,
``cmaes``, ``was``, ``evopress``, ``bo``. Objectives take their vector with ``suggest_allocation``.
"""

from __future__ import annotations

from allocator.samplers._base import (
    DISTANCE_ATTR,
    PROPOSAL_ATTR,
    SAMPLER_NAMES,
    VECTOR_ATTR,
    BlockSampler,
    History,
    collect_history,
    create_sampler,
    distributions,
    evaluated_vector,
    suggest_allocation,
)
from allocator.samplers._bo import BoSampler
from allocator.samplers._evopress import EvoPressSampler
from allocator.samplers._optuna import cmaes_sampler, tpe_sampler
from allocator.samplers._random import RandomBlockSampler
from allocator.samplers._uniform import UniformSampler
from allocator.samplers._was import WasSampler

__all__ = [
    "DISTANCE_ATTR",
    "PROPOSAL_ATTR",
    "SAMPLER_NAMES",
    "VECTOR_ATTR",
    "BlockSampler",
    "BoSampler",
    "EvoPressSampler",
    "History",
    "RandomBlockSampler",
    "UniformSampler",
    "WasSampler",
    "cmaes_sampler",
    "collect_history",
    "create_sampler",
    "distributions",
    "evaluated_vector",
    "suggest_allocation",
    "tpe_sampler",
]
