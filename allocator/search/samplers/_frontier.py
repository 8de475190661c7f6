"""Frontier studies: one study, several targets, every trial on its own target's constraint.

A frontier sampler gives each new trial its target (the user attribute ``target``, written before the
objective suggests anything, so the objective evaluates the vector on that target's constraint) and
proposes its vector. Every registered sampler has a frontier variant (see the registry): by default
:class:`TargetsInTurn`, which runs the sampler once per target, each on a :class:`TargetView` of the study
that holds only that target's trials, the targets taking turns (the one with the fewest trials goes next),
so they share the study's budget evenly. A sampler that learns across the targets registers its own
frontier variant instead (``bo``: :class:`~allocator.search.samplers.FrontierBoSampler`, one model across the
targets that chooses where to spend each evaluation).

Everything is rebuilt from storage at every proposal, as for every sampler here: a frontier study resumes
and runs with several workers like any other. A retried trial keeps its target (Optuna's retry copies the
user attributes) and its vector.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from allocator.errors import InputError
from allocator.search import trial_attributes as attrs
from allocator.search._constraint import ConstraintSpace
from allocator.search._optuna_internals import study_storage

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study, StudyDirection

_COUNTED = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


class _TargetStorage(BaseStorage):
    """``storage`` as one target's sampler sees it: listing a study's trials gives only those ``keep`` accepts.

    Every other call is the storage's own (explicitly delegated: a new abstract method of Optuna's
    ``BaseStorage`` makes this class fail loudly instead of forwarding silently), so samplers write through it.
    Counting and the best trial go through the filtered listing (``BaseStorage``'s own implementations).
    """

    def __init__(self, storage: BaseStorage, keep: Callable[[FrozenTrial], bool]) -> None:
        self._inner = storage
        self._keep = keep

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return [t for t in self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states) if self._keep(t)]

    # -- studies
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._inner.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._inner.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._inner.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:  # Optuna's FrozenStudy, which it does not export
        return self._inner.get_all_studies()

    # -- trials, addressed by id or number (one trial of the study: nothing to filter)
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._inner.create_new_trial(study_id, template_trial)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._inner.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._inner.get_trial_param(trial_id, param_name)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self._inner.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._inner.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._inner.set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._inner.get_trial(trial_id)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._inner.get_trial_params(trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._inner.get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._inner.get_trial_system_attrs(trial_id)

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._inner.check_trial_is_updatable(trial_id, trial_state)

    def remove_session(self) -> None:
        self._inner.remove_session()


class TargetView(optuna.Study):
    """``study`` as one target's sampler sees it: an Optuna study whose trials are only those of ``target`` (and
    trial ``current``, the one being sampled). It is a real :class:`optuna.Study` over the same storage, filtered
    where the storage lists trials, so every sampler (Optuna's own included) reads and writes it as usual."""

    def __init__(self, study: Study, target: float, targets: Sequence[float], current: int | None = None) -> None:
        self._target = target
        self._targets = tuple(targets)
        self._current = current
        storage = _TargetStorage(study_storage(study), self._keeps)
        super().__init__(study_name=study.study_name, storage=storage, sampler=study.sampler, pruner=study.pruner)

    @property
    def target(self) -> float:
        """The target whose trials this view lists."""
        return self._target

    def _keeps(self, trial: FrozenTrial) -> bool:
        return trial.number == self._current or attrs.same_target(attrs.target_of(trial, self._targets), self._target)


def target_counts(study: Study, targets: Sequence[float], *, exclude: int | None = None) -> dict[float, int]:
    """How many COMPLETE, RUNNING or WAITING trials (other than ``exclude``) each target has."""
    counts = dict.fromkeys(targets, 0)
    for trial in study.get_trials(deepcopy=False, states=_COUNTED):
        target = attrs.target_of(trial, targets)
        if target is not None and trial.number != exclude:
            counts[target] += 1
    return counts


def next_in_turn(study: Study, targets: Sequence[float], *, exclude: int | None = None) -> float:
    """The target with the fewest trials (the lowest of those tied): the targets take turns."""
    counts = target_counts(study, targets, exclude=exclude)
    return min(targets, key=lambda t: (counts[t], t))


def find_target(targets: Sequence[float], target: float) -> float:
    """The one of ``targets`` that ``target`` names; an unknown target is one sentence listing them."""
    found = attrs.known_target(targets, target)
    if found is None:
        raise InputError(f"The study has no target {target}; its targets are {', '.join(f'{t:g}' for t in targets)}.")
    return found


@runtime_checkable
class SerializableSampler(Protocol):
    """A sampler that can make its proposals under a cross-process lock (see ``ProposalSampler.serialize_with``)."""

    def serialize_with(self, lock: Callable[[], AbstractContextManager[Any]]) -> None:
        """Make every later proposal while holding ``lock()``, so workers of one study propose one at a time."""
        ...


class TargetsInTurn(BaseSampler):
    """Any sampler, run once per target on that target's trials, the targets taking turns.

    Args:
        spaces: The constraint space of each target.
        build: Builds one target's sampler from its constraint space (seeded alike for every target).
    """

    def __init__(self, *, spaces: Mapping[float, ConstraintSpace], build: Callable[[ConstraintSpace], BaseSampler]):
        self._targets = tuple(sorted(spaces))
        self._inner = {t: build(spaces[t]) for t in self._targets}
        # The view of the trial being sampled, reused by its sampler calls: one view (and its cache) per trial.
        self._last: tuple[tuple[BaseStorage, str, int, float], TargetView] | None = None

    @property
    def targets(self) -> tuple[float, ...]:
        """The study's targets, increasing."""
        return self._targets

    def sampler_for(self, target: float) -> BaseSampler:
        """The sampler of ``target``."""
        return self._inner[find_target(self._targets, target)]

    def serialize_with(self, lock: Callable[[], AbstractContextManager[Any]]) -> None:
        """Make every target's proposals under ``lock`` (see ``ProposalSampler.serialize_with``)."""
        for sampler in self._inner.values():
            if isinstance(sampler, SerializableSampler):
                sampler.serialize_with(lock)

    def search_split(self, split: Any) -> None:
        """Search the site split too, each target on its own trials: its own start points, its own share (see
        ``BlockSampler.search_split``)."""
        for sampler in self._inner.values():
            sampler.search_split(split)  # type: ignore[attr-defined]

    def _view(self, study: Study, trial: FrozenTrial) -> tuple[BaseSampler, TargetView]:
        target = attrs.target_of(trial, self._targets)
        if target is None:
            raise InputError(f"Trial {trial.number} of a frontier study has no target.")
        key = (study_storage(study), study.study_name, trial.number, target)
        last = self._last
        if last is None or last[0] != key:
            last = (key, TargetView(study, target, self._targets, trial.number))
            self._last = last
        return self._inner[target], last[1]

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Give a new trial the target next in turn, then let that target's sampler prepare it on its view."""
        if attrs.target_of(trial, self._targets) is None:
            attrs.assign_target(study, trial, next_in_turn(study, self._targets, exclude=trial.number))
        sampler, view = self._view(study, trial)
        sampler.before_trial(view, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The search space of the trial's target sampler, as it sees its own target's trials."""
        sampler, view = self._view(study, trial)
        return sampler.infer_relative_search_space(view, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The trial's target sampler's proposal, made on that target's trials only (none for a retried trial)."""
        if attrs.FIXED_PARAMS in trial.system_attrs:
            return {}  # a retried trial evaluates the vector it was enqueued with
        sampler, view = self._view(study, trial)
        return sampler.sample_relative(view, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """One parameter from the trial's target sampler, on that target's trials only."""
        sampler, view = self._view(study, trial)
        return sampler.sample_independent(view, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        """Tell the trial's target sampler that the trial ended (nothing when it failed before it had a target)."""
        if attrs.target_of(trial, self._targets) is None:
            return  # it failed before it had a target: no target's sampler saw it
        sampler, view = self._view(study, trial)
        sampler.after_trial(view, trial, state, values)
