"""Frontier studies: one study, several targets, every trial on its own target's constraint.

A frontier sampler gives each new trial its target (the user attribute ``target``, written before the
objective suggests anything, so the objective evaluates the vector on that target's constraint) and
proposes its vector. :class:`TargetsInTurn` runs any registered sampler once per target, each on a
:class:`TargetView` of the study that holds only that target's trials; the targets take turns (the one with
the fewest trials goes next), so they share the study's budget evenly. ``bo`` has its own frontier sampler
(:class:`~allocator.samplers.FrontierBoSampler`), which learns one model across the targets and chooses where
to spend each evaluation.

Everything is rebuilt from storage at every proposal, as for every sampler here: a frontier study resumes
and runs with several workers like any other. A retried trial keeps its target (Optuna's retry copies the
user attributes) and its vector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from allocator import trial_attributes as attrs
from allocator._constraint import ConstraintSpace
from allocator.errors import InputError
from allocator.samplers._base import BlockSampler

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study

_COUNTED = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


class TargetView:
    """``study`` as one target's sampler sees it: only the trials of ``target`` (and trial ``current``, the one
    being sampled). Every other attribute is the study's own, so samplers write through its storage."""

    def __init__(self, study: Study, target: float, targets: Sequence[float], current: int | None = None) -> None:
        self._study = study
        self._target = target
        self._targets = tuple(targets)
        self._current = current

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _keep(self, trial: FrozenTrial) -> bool:
        return trial.number == self._current or attrs.same_target(attrs.target_of(trial, self._targets), self._target)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if self._keep(t)]

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if self._keep(t)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


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
    found = attrs.known_target(targets, target)
    if found is None:
        raise InputError(f"The study has no target {target}; its targets are {', '.join(f'{t:g}' for t in targets)}.")
    return found


class TargetsInTurn(BaseSampler):
    """Any sampler, run once per target on that target's trials, the targets taking turns.

    Args:
        spaces: The constraint space of each target.
        build: Builds one target's sampler from its constraint space (seeded alike for every target).
    """

    def __init__(self, *, spaces: Mapping[float, ConstraintSpace], build: Callable[[ConstraintSpace], BaseSampler]):
        self._targets = tuple(sorted(spaces))
        self._inner = {t: build(spaces[t]) for t in self._targets}

    @property
    def targets(self) -> tuple[float, ...]:
        return self._targets

    def sampler_for(self, target: float) -> BaseSampler:
        return self._inner[find_target(self._targets, target)]

    def serialize_with(self, lock: Callable[[], AbstractContextManager[Any]]) -> None:
        """Make every target's proposals under ``lock`` (see :meth:`BlockSampler.serialize_with`)."""
        for sampler in self._inner.values():
            if isinstance(sampler, BlockSampler):
                sampler.serialize_with(lock)

    def _view(self, study: Study, trial: FrozenTrial) -> tuple[BaseSampler, TargetView]:
        target = attrs.target_of(trial, self._targets)
        if target is None:
            raise InputError(f"Trial {trial.number} of a frontier study has no target.")
        return self._inner[target], TargetView(study, target, self._targets, trial.number)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if attrs.target_of(trial, self._targets) is None:
            attrs.assign_target(study, trial, next_in_turn(study, self._targets, exclude=trial.number))
        sampler, view = self._view(study, trial)
        sampler.before_trial(view, trial)  # type: ignore[arg-type]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        sampler, view = self._view(study, trial)
        return sampler.infer_relative_search_space(view, trial)  # type: ignore[arg-type]

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if attrs.FIXED_PARAMS in trial.system_attrs:
            return {}  # a retried trial evaluates the vector it was enqueued with
        sampler, view = self._view(study, trial)
        return sampler.sample_relative(view, trial, search_space)  # type: ignore[arg-type]

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        sampler, view = self._view(study, trial)
        return sampler.sample_independent(view, trial, param_name, param_distribution)  # type: ignore[arg-type]

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        if attrs.target_of(trial, self._targets) is None:
            return  # it failed before it had a target: no target's sampler saw it
        sampler, view = self._view(study, trial)
        sampler.after_trial(view, trial, state, values)  # type: ignore[arg-type]


def create_frontier_sampler(
    name: str, *, spaces: Mapping[float, ConstraintSpace], seed: int | None = None, **options: Any
) -> BaseSampler:
    """The sampler of a frontier study: ``bo`` learns across the targets (:class:`FrontierBoSampler`); every
    other sampler runs per target, the targets in turn (:class:`TargetsInTurn`)."""
    from allocator.samplers._registry import create_sampler, parse_options

    if name == "bo":
        from allocator.samplers._bo_frontier import FrontierBoSampler

        return FrontierBoSampler(spaces=spaces, seed=seed, options=parse_options("bo", options))
    return TargetsInTurn(spaces=spaces, build=lambda space: create_sampler(name, space=space, seed=seed, **options))
