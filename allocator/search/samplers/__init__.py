"""Optuna samplers that propose the whole block vector at once, on the model-level sparsity constraint.

Every sampler registers itself in :mod:`allocator.search.samplers._registry` with its options model and its
capabilities; importing this package imports every sampler module, so the registry is complete.
``create_sampler(name, space=..., seed=..., **options)`` builds one by name; :func:`sampler_names` lists them.
Objectives take their vector with :func:`suggest_allocation`. A frontier study (several targets) gets the
sampler's registered frontier variant from :func:`create_frontier_sampler`.
"""

from __future__ import annotations

from allocator.search.samplers._base import (
    BlockSampler,
    History,
    ProposalSampler,
    collect_history,
    distributions,
    pending_vector,
    suggest_allocation,
)
from allocator.search.samplers._frontier import TargetsInTurn, TargetView, next_in_turn
from allocator.search.samplers._registry import (
    SamplerEntry,
    SamplerOptions,
    create_frontier_sampler,
    create_sampler,
    parse_options,
    register_frontier,
    register_sampler,
    sampler_entry,
    sampler_names,
)
from allocator.search.samplers._split import Place, SplitSearch, next_probe, no_search_label, same_share

# Registration order is the order of `sampler_names()`: the baselines first, then the searches.
from allocator.search.samplers._uniform import GreedyUniformSampler, UniformSampler  # isort: skip
from allocator.search.samplers._random import RandomBlockSampler, RandomOptions  # isort: skip
from allocator.search.samplers._optuna import CmaesOptions, TpeOptions, cmaes_sampler, tpe_sampler  # isort: skip
from allocator.search.samplers._was import WasOptions, WasSampler  # isort: skip
from allocator.search.samplers._evopress import EvoPressOptions, EvoPressSampler  # isort: skip
from allocator.search.samplers._bo import (  # isort: skip
    BoOptions,
    BoSampler,
    SearchSpace,
    gp_hyperparameters,
    knot_space,
    profile_matrix,
    single_threaded,
)
from allocator.search.samplers._bo_frontier import FrontierBoSampler  # isort: skip
from allocator.search.samplers._acqf import (  # isort: skip
    AcqResult,
    NullSpaceMap,
    optimize_nullspace,
    optimize_slsqp,
    rank_candidates,
    select_starts,
)

__all__ = [
    "AcqResult",
    "BlockSampler",
    "BoOptions",
    "BoSampler",
    "CmaesOptions",
    "EvoPressOptions",
    "EvoPressSampler",
    "FrontierBoSampler",
    "GreedyUniformSampler",
    "History",
    "NullSpaceMap",
    "Place",
    "ProposalSampler",
    "RandomBlockSampler",
    "RandomOptions",
    "SamplerEntry",
    "SamplerOptions",
    "SearchSpace",
    "SplitSearch",
    "TargetView",
    "TargetsInTurn",
    "TpeOptions",
    "UniformSampler",
    "WasOptions",
    "WasSampler",
    "cmaes_sampler",
    "collect_history",
    "create_frontier_sampler",
    "create_sampler",
    "distributions",
    "gp_hyperparameters",
    "knot_space",
    "next_in_turn",
    "next_probe",
    "no_search_label",
    "optimize_nullspace",
    "optimize_slsqp",
    "parse_options",
    "pending_vector",
    "profile_matrix",
    "rank_candidates",
    "register_frontier",
    "register_sampler",
    "same_share",
    "sampler_entry",
    "sampler_names",
    "select_starts",
    "single_threaded",
    "suggest_allocation",
    "tpe_sampler",
]
