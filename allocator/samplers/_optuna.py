"""Optuna's own TPE and CMA-ES on the block parameters (thin factories, no reimplementation).

They know nothing of the constraint: the objective evaluates their suggestion through
:func:`~allocator.samplers.suggest_allocation`, whose one projection puts it on the constraint and records
the evaluated vector. They learn from the suggested params (with the value of the projected point), which
is the usual "repair" treatment of constraints for black-box samplers.
"""

from __future__ import annotations

from optuna.samplers import BaseSampler, CmaEsSampler, TPESampler

from allocator._constraint import ConstraintSpace


def tpe_sampler(
    *,
    space: ConstraintSpace,
    seed: int | None = None,
    n_startup_trials: int = 10,
    multivariate: bool = True,
    constant_liar: bool = True,
    n_ei_candidates: int = 24,
) -> BaseSampler:
    """Optuna's ``TPESampler``, multivariate (the blocks interact) with a constant liar (running trials of
    other workers are pending points)."""
    del space  # the search space is the block params the objective suggests
    return TPESampler(
        seed=seed,
        n_startup_trials=n_startup_trials,
        multivariate=multivariate,
        constant_liar=constant_liar,
        n_ei_candidates=n_ei_candidates,
    )


def cmaes_sampler(
    *,
    space: ConstraintSpace,
    seed: int | None = None,
    popsize: int | None = None,
    n_startup_trials: int = 1,
) -> BaseSampler:
    """Optuna's ``CmaEsSampler`` with its defaults: the search starts at the centre of the block box with
    ``σ₀`` a sixth of its width. (``x0``/``sigma0`` are deprecated since Optuna 4.9, so we do not start it
    at the uniform vector; for the symmetric default bounds the centre is close to it.)"""
    del space
    return CmaEsSampler(
        seed=seed,
        popsize=popsize,
        n_startup_trials=n_startup_trials,
        warn_independent_sampling=False,
    )
