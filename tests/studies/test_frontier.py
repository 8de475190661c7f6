"""Frontier studies: several targets in one study, every trial on its own target's constraint."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from allocator.search import trial_attributes as attrs
from storage import Database
from studies import create_study, load_config, open_session, run_study

TARGETS = [0.3, 0.5, 0.7]


def _complete(database: Database, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=database.url)
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE]


def _check_every_trial_meets_its_target(session, trials) -> dict[float, int]:
    counts: dict[float, int] = {}
    for trial in trials:
        target = attrs.trial_target(trial)
        assert target in TARGETS
        vector = attrs.evaluated_vector(trial, session.space.dim)
        assert session.space_for(target).contains(vector, tol=1e-9)
        # The quantile rule makes the measured sparsity the target itself.
        assert abs(attrs.measured_sparsity(trial) - target) < 5e-3
        counts[target] = counts.get(target, 0) + 1
    return counts


@pytest.mark.parametrize("sampler", ["random", "bo"])
def test_a_frontier_study_meets_every_target_and_resumes(sqlite_url, write_config, sampler):
    options = {"n_initial": 3, "num_restarts": 2, "raw_samples": 32, "mc_samples": 16} if sampler == "bo" else {}
    path = write_config(name="front", sparsity={"target": TARGETS}, sampler={"name": sampler, "options": options})
    config, _ = load_config(path)
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    first = run_study(session, n_trials=5)
    assert first.complete == 5
    again = run_study(open_session(Database(sqlite_url), config), n_trials=9)
    assert (again.complete, again.evaluated_here) == (9, 4)
    trials = _complete(database, "front")
    counts = _check_every_trial_meets_its_target(session, trials)
    if sampler == "random":
        assert counts == dict.fromkeys(TARGETS, 3)  # the targets take turns
    else:
        assert set(counts) == set(TARGETS) and min(counts.values()) >= 2  # each target's initial design
    # Each target's first trial is its uniform allocation (bo's design starts there); after the design, the
    # GP across targets chose the target of each trial (no fallback to the design).
    if sampler == "bo":
        assert sum(1 for t in trials if attrs.FRONTIER_CHOICE in t.system_attrs) >= 2
        assert not any(attrs.BO_FALLBACK in t.system_attrs for t in trials)
        for target in TARGETS:
            first_at = min((t for t in trials if attrs.trial_target(t) == target), key=lambda t: t.number)
            np.testing.assert_allclose(attrs.evaluated_vector(first_at), target, atol=1e-9)
    assert len({tuple(attrs.evaluated_vector(t)) for t in trials}) == 9


def test_uniform_runs_once_per_target(sqlite_url, write_config):
    path = write_config(name="front-u", sparsity={"target": TARGETS}, sampler={"name": "uniform"}, trials=10)
    config, _ = load_config(path)
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    result = run_study(session)
    assert result.complete == 3
    trials = _complete(database, "front-u")
    assert _check_every_trial_meets_its_target(session, trials) == dict.fromkeys(TARGETS, 1)
    for trial in trials:
        np.testing.assert_allclose(attrs.evaluated_vector(trial), attrs.trial_target(trial), atol=1e-12)


def test_promotion_compares_values_of_one_target_only(sqlite_url, write_config):
    """A 70% trial's KL is far above a 30% trial's: were they compared, no 70% trial would be promoted."""
    path = write_config(
        name="front-p",
        sparsity={"target": [0.3, 0.7]},
        sampler={"name": "random"},
        search={"screen_sequences": 4, "promote_sequences": [4], "promote_ratio": 2.0},
        trials=6,
    )
    config, _ = load_config(path)
    database = Database(sqlite_url)
    create_study(database, config)
    run_study(open_session(database, config))
    trials = _complete(database, "front-p")
    high = [t for t in trials if attrs.trial_target(t) == 0.7]
    low = [t for t in trials if attrs.trial_target(t) == 0.3]
    assert len(high) == len(low) == 3
    assert max(t.value for t in low) < min(t.value for t in high)  # the premise: the scales differ
    assert any(len(attrs.rung_values(t)) == 2 for t in high)  # the first 70% trial is promoted at 70%
