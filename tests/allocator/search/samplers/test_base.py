"""The shared conventions: suggest_allocation, evaluated_vector, history, the registry."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from allocator import ConstraintSpace, InputError
from allocator.search import trial_attributes as attrs
from allocator.search.samplers import (
    collect_history,
    create_sampler,
    suggest_allocation,
)

SPACE = ConstraintSpace(weights=[1.0, 2.0, 3.0], target=0.4, lower=0.0, upper=0.9)


def test_suggest_allocation_projects_an_infeasible_suggestion_and_records_it() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"block_0": 0.9, "block_1": 0.9, "block_2": 0.9})
    trial = study.ask()
    vector = suggest_allocation(trial, SPACE)
    assert SPACE.contains(vector, tol=1e-12)
    np.testing.assert_allclose(vector, SPACE.project([0.9, 0.9, 0.9]))
    assert trial.params == {"block_0": 0.9, "block_1": 0.9, "block_2": 0.9}
    assert trial.user_attrs[attrs.VECTOR] == pytest.approx(list(vector))
    assert trial.user_attrs[attrs.PROJECTION_DISTANCE] == pytest.approx(np.linalg.norm(vector - 0.9))


def test_suggest_allocation_keeps_a_feasible_suggestion() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"block_0": 0.4, "block_1": 0.4, "block_2": 0.4})
    trial = study.ask()
    vector = suggest_allocation(trial, SPACE)
    np.testing.assert_array_equal(vector, [0.4, 0.4, 0.4])
    assert trial.user_attrs[attrs.PROJECTION_DISTANCE] == 0.0


def test_evaluated_vector_prefers_the_user_attribute_then_params() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"block_0": 0.9, "block_1": 0.9, "block_2": 0.9})
    study.optimize(lambda t: float(suggest_allocation(t, SPACE).sum()), n_trials=1)
    frozen = study.trials[0]
    np.testing.assert_allclose(attrs.evaluated_vector(frozen, SPACE.dim), SPACE.project([0.9] * 3))
    bare = optuna.trial.create_trial(
        params={"block_1": 0.2, "block_0": 0.1, "block_2": 0.3},
        distributions={n: optuna.distributions.FloatDistribution(0, 0.9) for n in SPACE.param_names},
        value=1.0,
    )
    np.testing.assert_array_equal(attrs.evaluated_vector(bare), [0.1, 0.2, 0.3])
    assert attrs.evaluated_vector(bare, ConstraintSpace(weights=[1, 1, 1, 1], target=0.5).dim) is None


def test_history_reads_finished_and_pending_trials() -> None:
    sampler = create_sampler("random", space=SPACE, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: 1.0 + float(suggest_allocation(t, SPACE)[0]), n_trials=3)
    running = study.ask()
    pending = suggest_allocation(running, SPACE)
    asked = study.ask()  # asked, nothing suggested, no proposal: not a pending point
    current = study.ask()
    history = collect_history(study, current._cached_frozen_trial, SPACE)
    assert history.n == 3 and history.X.shape == (3, 3)
    np.testing.assert_allclose(history.pending, pending[None, :])
    assert running.number != asked.number
    best = history.best()
    assert best is not None and best[1] == history.y.min()


def test_proposal_is_visible_before_the_objective_suggests() -> None:
    sampler = create_sampler("random", space=SPACE, seed=0)
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    trial.suggest_float("block_0", 0.0, 0.9)  # the first suggestion triggers the whole relative sample
    proposal = study._storage.get_trial(trial._trial_id).system_attrs[attrs.PROPOSAL]
    assert SPACE.contains(np.asarray(proposal), tol=1e-9)


def test_values_must_be_positive_for_model_based_samplers() -> None:
    study = optuna.create_study(sampler=create_sampler("bo", space=SPACE, seed=0, n_initial=2))
    study.optimize(lambda t: float(suggest_allocation(t, SPACE)[0]) - 1.0, n_trials=2)
    with pytest.raises(InputError, match="positive"):
        study.optimize(lambda t: float(suggest_allocation(t, SPACE)[0]), n_trials=1)


def test_maximize_studies_are_refused() -> None:
    study = optuna.create_study(direction="maximize", sampler=create_sampler("random", space=SPACE, seed=0))
    with pytest.raises(InputError, match="`direction`"):
        study.optimize(lambda t: float(suggest_allocation(t, SPACE)[0]), n_trials=1)


def test_other_parameters_are_sampled_independently() -> None:
    study = optuna.create_study(sampler=create_sampler("evopress", space=SPACE, seed=0))

    def objective(trial: optuna.Trial) -> float:
        vector = suggest_allocation(trial, SPACE)
        extra = trial.suggest_int("extra", 0, 3)
        return 1.0 + float(vector[0]) + extra

    study.optimize(objective, n_trials=3)
    assert all(0 <= t.params["extra"] <= 3 for t in study.trials)
