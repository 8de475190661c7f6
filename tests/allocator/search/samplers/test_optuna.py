"""Optuna's TPE and CMA-ES through the registry: thin factories, projected by suggest_allocation."""

from __future__ import annotations

import numpy as np
import optuna

from allocator import ConstraintSpace
from allocator.search.samplers import create_sampler, suggest_allocation

SPACE = ConstraintSpace(weights=[1.0, 2.0, 1.0, 3.0, 1.0], target=0.4, lower=0.0, upper=0.9)


def test_tpe_is_multivariate_with_a_constant_liar() -> None:
    sampler = create_sampler("tpe", space=SPACE, seed=3)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._multivariate and sampler._constant_liar


def test_cmaes_is_optunas_with_defaults() -> None:
    sampler = create_sampler("cmaes", space=SPACE, seed=3)
    assert isinstance(sampler, optuna.samplers.CmaEsSampler)
    assert sampler._x0 is None and sampler._sigma0 is None


def test_their_suggestions_are_projected_and_recorded() -> None:
    for name in ("tpe", "cmaes"):
        study = optuna.create_study(sampler=create_sampler(name, space=SPACE, seed=0))
        study.optimize(lambda t: float(np.exp(suggest_allocation(t, SPACE) @ np.arange(5))), n_trials=15)
        distances = [t.user_attrs["projection_distance"] for t in study.trials]
        assert max(distances) > 1e-3  # they do not know the constraint …
        assert all(SPACE.contains(np.asarray(t.user_attrs["vector"]), tol=1e-9) for t in study.trials)  # … repaired
