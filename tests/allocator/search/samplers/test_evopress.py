"""The EvoPress reproduction: weight-preserving level swaps; one offspring per trial (``stages: None``) here,
its reference form's generations (staged selection by the study runner) in tests/studies/test_search.py."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from allocator import ConstraintSpace
from allocator.search.samplers import create_sampler, suggest_allocation

SPACE = ConstraintSpace(weights=[1.0, 2.0, 1.0, 4.0, 1.5, 1.0], target=0.5, lower=0.0, upper=0.9)


def _objective(trial: optuna.Trial) -> float:
    return float(np.exp(suggest_allocation(trial, SPACE) @ np.array([3.0, 1.0, 0.5, 0.2, 1.0, 2.0])))


def test_first_trial_is_the_uniform_parent_and_offspring_preserve_the_total_exactly() -> None:
    sampler = create_sampler("evopress", space=SPACE, seed=0, offspring=3, stages=None)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=13)
    vecs = np.array([t.user_attrs["vector"] for t in study.trials])
    np.testing.assert_array_equal(vecs[0], np.full(6, 0.5))
    w = SPACE.weight_array()
    assert np.all(np.abs(vecs @ w - SPACE.rhs) <= 1e-12 * SPACE.rhs)
    assert all(t.user_attrs["projection_distance"] == 0.0 for t in study.trials)
    # Every offspring differs from its parent by whole levels: w_b Δs_b is a multiple of the quantum.
    quantum = 0.5 * 0.5 / 8 * float(w.mean())
    for k in range(1, 13):
        parent = sampler.parent(_history(study, k), sampler.generation(k), vecs[0])
        levels = (vecs[k] - parent) * w / quantum
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-9)
        assert 1 <= np.abs(np.round(levels)).sum() / 2 <= 3


def _history(study: optuna.Study, k: int):
    from allocator.search.samplers import collect_history

    hist = collect_history(study, study.trials[k], SPACE)
    mask = hist.numbers < k
    return type(hist)(
        X=hist.X[mask],
        y=hist.y[mask],
        numbers=hist.numbers[mask],
        pending=hist.pending,
        trials=(),
        pending_trials=(),
    )


def test_generations_and_elitist_parent() -> None:
    sampler = create_sampler("evopress", space=SPACE, seed=1, offspring=4, stages=None)
    assert [sampler.generation(k) for k in range(10)] == [-1, 0, 0, 0, 0, 1, 1, 1, 1, 2]
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=9)
    vecs = np.array([t.user_attrs["vector"] for t in study.trials])
    values = np.array([t.value for t in study.trials])
    # Generation 1 (trials 5..8) descends from the best of trials 0..4.
    parent = vecs[int(np.argmin(values[:5]))]
    w = SPACE.weight_array()
    for k in range(5, 9):
        moved = np.abs(vecs[k] - parent) * w
        assert np.count_nonzero(moved > 1e-12) <= 6


def test_defaults_follow_evopress() -> None:
    sampler = create_sampler("evopress", space=SPACE, seed=0)
    assert sampler.options.offspring == 8 and sampler.options.num_levels == 8 and sampler._stages == [(2, 2), (8, 1)]
    assert sampler._step == pytest.approx(0.5 * 0.5 / 8)


def test_a_generation_is_proposed_as_distinct_offspring_of_the_parent() -> None:
    from allocator.search import trial_attributes as attrs

    sampler = create_sampler("evopress", space=SPACE, seed=0, offspring=5)
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    parent = suggest_allocation(trial, SPACE)
    np.testing.assert_allclose(parent, SPACE.uniform_vector())  # the first generation's parent
    plan = attrs.selection_plan(study, trial)
    candidates = np.array(plan["candidates"])
    assert candidates.shape == (6, 6) and plan["stages"] == [[2, 2], [8, 1]]
    assert len({tuple(np.round(c, 12)) for c in candidates}) == 6
    assert all(SPACE.contains(c, tol=1e-9) for c in candidates)


def test_levels_stay_within_bounds_and_range() -> None:
    tight = ConstraintSpace(weights=[1.0, 1.0, 1.0], target=0.3, lower=[0.25, 0.0, 0.0], upper=[0.35, 0.9, 0.9])
    sampler = create_sampler("evopress", space=tight, seed=0, offspring=2, num_levels=2, stages=None)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: 1.0 + float(suggest_allocation(t, tight) @ [1.0, 2.0, 3.0]), n_trials=15)
    vecs = np.array([t.user_attrs["vector"] for t in study.trials])
    assert np.all(vecs >= tight.lower_array()) and np.all(vecs <= tight.upper_array())
    assert np.all(np.abs(vecs - 0.3) <= 2 * sampler._step * 1.0 + 1e-12)
