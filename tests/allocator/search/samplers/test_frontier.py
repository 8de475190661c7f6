"""A target's view of a frontier study: a real Optuna study that lists only that target's trials."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from allocator import ConstraintSpace
from allocator.search import trial_attributes as attrs
from allocator.search.samplers import TargetsInTurn, TargetView, next_in_turn

TARGETS = (0.3, 0.5)


def _study(storage: str | None) -> optuna.Study:
    """Trials 0-3 at 0.3, 0.5, 0.3, 0.5 (values 4, 3, 2, 1), then trial 4 running with no target yet."""
    study = optuna.create_study(storage=storage)
    for number, target in enumerate(TARGETS * 2):
        trial = study.ask()
        trial.set_user_attr(attrs.TARGET, target)
        study.tell(trial, 4.0 - number)
    study.ask()
    return study


@pytest.mark.parametrize("backend", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_view_is_an_optuna_study_of_one_targets_trials(backend: str, request) -> None:
    storage = None if backend == "memory" else request.getfixturevalue(f"{backend}_url")
    study = _study(storage)
    view = TargetView(study, 0.3, TARGETS)
    assert isinstance(view, optuna.Study) and view.study_name == study.study_name and view.target == 0.3
    assert [t.number for t in view.trials] == [0, 2]
    assert [t.number for t in view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))] == [0, 2]
    assert view.best_trial.number == 2  # the best of its own trials (trial 3, at 0.5, is better)
    assert [t.number for t in TargetView(study, 0.5, TARGETS, current=4).trials] == [1, 3, 4]
    # Samplers write through the view into the study's storage.
    running = study.trials[4]
    attrs.set_system_attr(view, running, "sparsealloc:probe", [1.0])
    assert study.trials[4].system_attrs["sparsealloc:probe"] == [1.0]
    assert next_in_turn(study, TARGETS, exclude=4) == 0.3


def test_each_target_sampler_learns_from_its_own_target_only() -> None:
    """Per-target samplers taking turns: each one's study holds its own target's trials only."""
    spaces = {t: ConstraintSpace(weights=[1.0, 1.0], target=t, lower=0.0, upper=0.9) for t in TARGETS}
    seen: dict[float, list[int]] = {t: [] for t in TARGETS}

    class Recording(optuna.samplers.RandomSampler):
        def __init__(self, target: float) -> None:
            super().__init__(seed=0)
            self.target = target

        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            seen[self.target].append(len(study.get_trials(states=(TrialState.COMPLETE,))))

    targets = iter(TARGETS)
    sampler = TargetsInTurn(spaces=spaces, build=lambda space: Recording(next(targets)))
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("block_0", 0.0, 0.9) + 1.0, n_trials=6)
    assert seen == {0.3: [0, 1, 2], 0.5: [0, 1, 2]}
    assert [attrs.trial_target(t) for t in study.trials] == [0.3, 0.5] * 3
    assert isinstance(sampler.sampler_for(0.5), Recording) and sampler.sampler_for(0.5).target == 0.5
