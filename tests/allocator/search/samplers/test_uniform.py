"""The uniform baseline."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from allocator import ConstraintSpace, InputError
from allocator.search.samplers import UniformSampler, create_sampler, suggest_allocation


def test_every_block_at_the_target() -> None:
    space = ConstraintSpace(weights=[1.0, 2.0, 5.0], target=0.35)
    study = optuna.create_study(sampler=create_sampler("uniform", space=space, seed=0))
    study.optimize(lambda t: 1.0 + float(suggest_allocation(t, space).sum()), n_trials=1)
    np.testing.assert_array_equal(study.trials[0].user_attrs["vector"], [0.35, 0.35, 0.35])
    assert UniformSampler.max_trials == 1


def test_bounds_that_exclude_the_target_give_the_projection() -> None:
    space = ConstraintSpace(weights=[1.0, 1.0, 2.0], target=0.5, lower=[0.0, 0.0, 0.6], upper=0.9)
    sampler = create_sampler("uniform", space=space, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: 1.0 + float(suggest_allocation(t, space)[0]), n_trials=1)
    vec = np.asarray(study.trials[0].user_attrs["vector"])
    np.testing.assert_allclose(vec, space.project([0.5, 0.5, 0.5]))
    assert vec[2] == 0.6 and space.contains(vec, tol=1e-12)


def test_second_proposal_is_refused_and_the_trial_marked_failed() -> None:
    space = ConstraintSpace(weights=[1.0, 1.0], target=0.5)
    study = optuna.create_study(sampler=create_sampler("uniform", space=space, seed=0))
    study.optimize(lambda t: 1.0 + float(suggest_allocation(t, space)[0]), n_trials=1)
    with pytest.raises(InputError, match=r"single point \(max_trials = 1\).*trial 0"):
        study.ask()
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]


def test_a_failed_first_trial_does_not_count() -> None:
    space = ConstraintSpace(weights=[1.0, 1.0], target=0.5)
    study = optuna.create_study(sampler=create_sampler("uniform", space=space, seed=0))
    trial = study.ask()
    suggest_allocation(trial, space)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.optimize(lambda t: 1.0 + float(suggest_allocation(t, space)[0]), n_trials=1)
    assert study.trials[-1].state == optuna.trial.TrialState.COMPLETE
