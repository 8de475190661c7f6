"""The ``uniform`` baseline: every block at the model-level target (TEAL's uniform allocation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from optuna.trial import TrialState

from allocator.errors import InputError
from allocator.search._optuna_internals import set_trial_state
from allocator.search.samplers._base import BlockSampler, History
from allocator.search.samplers._registry import register_sampler

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


@register_sampler("uniform", summary="every block at the target (one trial)")
class UniformSampler(BlockSampler):
    """Propose ``s_b = t`` for every block, or the projection of that constant vector when a bound excludes it.

    There is a single point, so ``max_trials = 1``: the study runner runs one trial. A second proposal is
    refused at ``study.ask()`` with :class:`~allocator.InputError`; the refused trial is marked FAIL so the
    study is not left with a trial that runs forever. A first trial that FAILed does not count.
    """

    max_trials: ClassVar[int | None] = 1

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Refuse (and fail) a second trial: this sampler has one point, so a second would repeat the first."""
        others = [
            t for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.state != TrialState.FAIL
        ]
        if len(others) >= 1:
            set_trial_state(study, trial, TrialState.FAIL)
            raise InputError(
                f"The `{self.name}` sampler has a single point (max_trials = 1) and the study already has trial "
                f"{others[0].number}; run it with one trial."
            )

    def propose(self, study: Study, trial: FrozenTrial, history: History) -> np.ndarray:
        """Every block at the target: the uniform vector."""
        return self.space.uniform_vector()


@register_sampler("greedy", site_split="greedy", summary="TEAL's greedy-uniform: the uniform vector, greedy split")
class GreedyUniformSampler(UniformSampler):
    """TEAL's greedy-uniform method: every block at the target, each block's sites split by the greedy tables.

    The proposal is the uniform vector; what makes it TEAL's method is the study's ``greedy`` site split,
    which the registry requires of a study using this sampler.
    """
