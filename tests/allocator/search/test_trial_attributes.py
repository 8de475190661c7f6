"""Which trials meet a target: the one reader every part of sparsealloc uses (runner, samplers, status,
report, export)."""

from __future__ import annotations

import optuna

from allocator.search import trial_attributes as attrs


def _trials(targets: list[float | None]) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study()
    for target in targets:
        trial = study.ask()
        if target is not None:
            trial.set_user_attr(attrs.TARGET, target)
        study.tell(trial, 1.0)
    return study.get_trials()


def test_a_frontier_study_keeps_each_targets_own_trials():
    trials = _trials([0.4, 0.5, 0.4 + 1e-12, None, 0.6])
    assert [t.number for t in attrs.trials_at(trials, 0.4, (0.4, 0.5, 0.6))] == [0, 2]
    assert [t.number for t in attrs.trials_at(trials, 0.5)] == [1]
    assert attrs.target_of(trials[3], (0.4, 0.5, 0.6)) is None  # no target given yet: at none of them
    assert attrs.target_of(trials[4], (0.4, 0.5)) is None  # a target the study does not have


def test_an_unrecorded_target_is_the_only_target_of_a_single_target_study():
    trials = _trials([None, 0.5])
    assert [t.number for t in attrs.trials_at(trials, 0.5, (0.5,))] == [0, 1]
    assert [t.number for t in attrs.trials_at(trials, 0.5)] == [1]  # without the study's targets: recorded only
