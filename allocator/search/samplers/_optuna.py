"""Optuna's own TPE and CMA-ES on the block parameters (thin factories, no reimplementation).

They know nothing of the constraint: the objective evaluates their suggestion through
:func:`~allocator.search.samplers.suggest_allocation`, whose one projection puts it on the constraint and records
the evaluated vector. They learn from the suggested params (with the value of the projected point), which
is the usual "repair" treatment of constraints for black-box samplers.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import BaseSampler, CmaEsSampler, TPESampler
from pydantic import Field

from allocator.search._constraint import ConstraintSpace
from allocator.search.samplers._registry import SamplerOptions, register_sampler, validate_options


class TpeOptions(SamplerOptions):
    """Options of ``tpe``: Optuna's ``TPESampler``, multivariate (the blocks interact) with a constant liar
    (running trials of other workers are pending points)."""

    n_startup_trials: int = Field(default=10, ge=0)
    multivariate: bool = True
    constant_liar: bool = True
    n_ei_candidates: int = Field(default=24, ge=1)


class CmaesOptions(SamplerOptions):
    """Options of ``cmaes``: Optuna's ``CmaEsSampler`` (``popsize`` None: its default)."""

    popsize: int | None = Field(default=None, ge=2)
    n_startup_trials: int = Field(default=1, ge=0)


@register_sampler("tpe", options=TpeOptions, summary="Optuna's multivariate TPE, projected onto the constraint")
def tpe_sampler(
    *, space: ConstraintSpace, seed: int | None = None, options: TpeOptions | None = None, **values: Any
) -> BaseSampler:
    """Optuna's ``TPESampler`` on the block parameters."""
    del space  # the search space is the block params the objective suggests
    o = validate_options(TpeOptions, "tpe", options if options is not None else values)
    assert isinstance(o, TpeOptions)
    return TPESampler(
        seed=seed,
        n_startup_trials=o.n_startup_trials,
        multivariate=o.multivariate,
        constant_liar=o.constant_liar,
        n_ei_candidates=o.n_ei_candidates,
    )


@register_sampler("cmaes", options=CmaesOptions, summary="Optuna's CMA-ES, projected onto the constraint")
def cmaes_sampler(
    *, space: ConstraintSpace, seed: int | None = None, options: CmaesOptions | None = None, **values: Any
) -> BaseSampler:
    """Optuna's ``CmaEsSampler`` with its defaults: the search starts at the centre of the block box with
    ``σ₀`` a sixth of its width. (``x0``/``sigma0`` are deprecated since Optuna 4.9, so we do not start it
    at the uniform vector; for the symmetric default bounds the centre is close to it.)"""
    del space
    o = validate_options(CmaesOptions, "cmaes", options if options is not None else values)
    assert isinstance(o, CmaesOptions)
    return CmaEsSampler(
        seed=seed, popsize=o.popsize, n_startup_trials=o.n_startup_trials, warn_independent_sampling=False
    )
