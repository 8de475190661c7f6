"""``bo`` on a frontier study: one GP across every target, and a choice of target for each evaluation.

* **Inputs.** A trial at target ``t`` with vector ``s`` (or its depth knots, in the profile phase) enters the
  GP as ``[s − t, t]``: the deviation from uniform allocation, which meets ``Σ_b w_b (s_b − t) = 0`` at
  every target, and the target itself. What a block tolerates at 50% then informs the search at 60%
  through the kernel's lengthscale on ``t``, instead of every target starting from nothing.
* **Output.** ``log(value) − log(value of the uniform allocation at t)``: KL and perplexity grow by orders
  of magnitude from 40% to 70%, but "how much better than uniform" is on one scale at every target. The
  uniform vector is the first design point of every target, so its value is known before the GP starts.
* **Choice of target.** For each target, qLogNEI with that target's trials as its baseline (an improvement
  at 60% is over the best at 60%, not over the best anywhere) and that target's running trials as pending
  points, maximised on that target's constraint; the proposal goes to the target with the highest
  ``log EI − log cost``, where the cost is the mean evaluation time of the target's trials (the quantile
  rule makes every target cost about the same, so this mostly picks the largest expected gain). A target
  with fewer than half the mean number of trials per target is chosen first (among those, by the same
  rule): the GP can be confident too early about a target it has seen little of, and a frontier has to be
  good at every target. On the synthetic frontier (``bench/frontier_synthetic.py``) the choice by gain alone
  gave one target 4 of 40 evaluations; the floor changed little there (the same regrets for two seeds,
  0.4-0.6 points worse at 0.4 and 0.5 for the third): it is a guard against starving a target, not a gain.
  Letting the targets simply take turns (option ``target_choice: turn``) measured worse than the choice by
  gain (median regret 6.6 / 8.7 / 14.3 / 32.9% against 4.3 / 7.3 / 10.0 / 18.5% at 0.4 / 0.5 / 0.6 / 0.7).
* **Phases.** Each target first gets ``max(2, ⌈n_initial / K⌉)`` design points (uniform first, then its
  own maximin sequence), the targets taking turns. The depth-knot profile phase of single-target ``bo``
  lasts while the study has fewer than ``profile_trials · max(1, K/2)`` finished trials (K targets share
  the study's trials, so each target's profile phase is about as long as a single-target study's would be
  over two targets' budget). The trust region option is not used across targets.

Everything else (noise estimate, acquisition optimisation on the constraint, fallback to a design point
when a model step fails) is single-target ``bo``'s (:mod:`._bo`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import optuna
import torch

from allocator.errors import first_line
from allocator.search import trial_attributes as attrs
from allocator.search._constraint import ConstraintSpace
from allocator.search.samplers._base import History, ProposalSampler, collect_history, is_duplicate
from allocator.search.samplers._bo import (
    BoOptions,
    BoSampler,
    SearchSpace,
    _model_errors,
    fit_gp,
    gp_hyperparameters,
    knot_space,
    latest_hyperparameters,
    log_nei,
    single_threaded,
)
from allocator.search.samplers._frontier import TargetView, next_in_turn
from allocator.search.samplers._registry import SamplerOptions, register_frontier

if TYPE_CHECKING:
    from botorch.acquisition import AcquisitionFunction
    from optuna.study import Study
    from optuna.trial import FrozenTrial


@register_frontier("bo")
class FrontierBoSampler(ProposalSampler):
    """``bo`` across the targets of a frontier study (see the module docstring): one GP across the targets, and
    one single-target :class:`BoSampler` per target for that target's design and acquisition optimisation.

    Args:
        spaces: The constraint space of each target (the same bounds; at least two targets).
        seed: The seed.
        options: :class:`BoOptions` (or its fields as keywords).
    """

    Options: ClassVar[type[SamplerOptions]] = BoOptions
    options: BoOptions

    def __init__(
        self,
        *,
        spaces: Mapping[float, ConstraintSpace],
        seed: int | None = None,
        options: BoOptions | None = None,
        **values: Any,
    ) -> None:
        self._targets = tuple(sorted(spaces))
        super().__init__(space=spaces[self._targets[0]], seed=seed, options=options, **values)
        self._members = {t: BoSampler(space=spaces[t], seed=self.seed, options=self.options) for t in self._targets}
        # Every target has the same blocks and bounds, hence the same profile (if any).
        self._M = self._members[self._targets[0]].profile_map

    @property
    def targets(self) -> tuple[float, ...]:
        """The study's targets, ascending."""
        return self._targets

    # ------------------------------------------------------------------ the publish path's steps

    def proposes_for(self, trial: FrozenTrial) -> bool:
        """False for a retried trial, which keeps its enqueued vector and target."""
        return attrs.FIXED_PARAMS not in trial.system_attrs  # a retried trial keeps its enqueued vector and target

    def place(self, study: Study, trial: FrozenTrial) -> tuple[ConstraintSpace, np.ndarray]:
        """Choose the trial's target and vector from every target's history, and give the trial its target."""
        histories = {
            t: collect_history(TargetView(study, t, self._targets), trial, member.space)
            for t, member in self._members.items()
        }
        target, vector = self.propose_frontier(study, trial, histories)
        attrs.assign_target(study, trial, target)
        return self._members[target].space, vector

    # ------------------------------------------------------------------ proposal

    def propose_frontier(
        self, study: Study, trial: FrozenTrial, histories: dict[float, History]
    ) -> tuple[float, np.ndarray]:
        """The target and block vector of the next trial (a target the trial already has is kept)."""
        fixed = attrs.target_of(trial, self._targets)
        candidates = (fixed,) if fixed is not None else self._targets
        rng = self.rng(trial)
        with torch.device("cpu"), torch.random.fork_rng(), single_threaded(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="A not p.d., added jitter")
            warnings.filterwarnings("ignore", message="Very small noise values detected")
            torch.manual_seed(int(rng.integers(2**31)))
            initial = max(2, math.ceil(self.options.n_initial / len(self._targets)))
            short = [t for t in candidates if histories[t].n < initial]
            if short or any(histories[t].n == 0 for t in self._targets):
                target = self._fewest(study, trial, short or list(candidates))
                return target, self._members[target].next_design_point(histories[target], rng)
            if self.options.target_choice == "turn" and fixed is None:
                candidates = (self._fewest(study, trial, list(candidates)),)
            candidates = self._behind(histories, candidates)
            try:
                return self._model_step_frontier(study, trial, histories, candidates, rng)
            except _model_errors() as error:
                reason = f"{type(error).__name__}: {first_line(error)}"
                attrs.set_system_attr(study, trial, attrs.BO_FALLBACK, reason)
                optuna.logging.get_logger(__name__).warning(
                    f"Trial {trial.number}: the bo model step failed ({reason}); proposing a space-filling point."
                )
                target = self._fewest(study, trial, list(candidates))
                return target, self._members[target].next_design_point(histories[target], rng)

    def _behind(self, histories: dict[float, History], candidates: tuple[float, ...]) -> tuple[float, ...]:
        """The candidates below half their fair share of the study's trials (finished and pending), if any.

        The choice by expected gain trusts the GP, which can be confident too early about a target it has
        seen little of; a frontier has to be good at every target, so no target falls below half the mean.
        """
        counts = {t: h.n + h.pending.shape[0] for t, h in histories.items()}
        floor = 0.5 * sum(counts.values()) / len(counts)
        behind = tuple(t for t in candidates if counts[t] < floor)
        return behind or candidates

    def _fewest(self, study: Study, trial: FrozenTrial, among: list[float]) -> float:
        """The target among ``among`` with the fewest trials (the lowest of those tied)."""
        return next_in_turn(study, among, exclude=trial.number)

    def searches(self, n_complete: int) -> dict[float, SearchSpace]:
        """Each target's search space: its depth knots during the profile phase, else its block vector."""
        phase_end = self.options.profile_trials * max(1.0, len(self._targets) / 2)
        if self._M is not None and n_complete < phase_end:
            knots = {t: knot_space(m.space, self._M) for t, m in self._members.items()}
            if all(k is not None for k in knots.values()):
                return {t: SearchSpace(space=k, to_blocks=self._M) for t, k in knots.items() if k is not None}
        return {t: SearchSpace(space=m.space, to_blocks=None) for t, m in self._members.items()}

    def inputs(self, search: SearchSpace, X: np.ndarray, target: float) -> np.ndarray:
        """GP inputs ``[features − t, t]`` (an ``n x (k + 1)`` array) of block vectors ``X`` at ``target``."""
        features = search.features(X)
        return np.concatenate([features - target, np.full((features.shape[0], 1), target)], axis=1)

    def input_bounds(self, search: SearchSpace) -> np.ndarray:
        """The ``2 x (k + 1)`` bounds of the inputs: every deviation a target's bounds allow, and the targets."""
        b = search.space.bounds_array()
        t_lo, t_hi = self._targets[0], self._targets[-1]
        return np.concatenate([np.stack([b[0] - t_hi, b[1] - t_lo]), np.array([[t_lo], [t_hi]])], axis=1)

    def _model_step_frontier(
        self,
        study: Study,
        trial: FrozenTrial,
        histories: dict[float, History],
        candidates: tuple[float, ...],
        rng: np.random.Generator,
    ) -> tuple[float, np.ndarray]:
        searches = self.searches(sum(h.n for h in histories.values()))
        first = searches[self._targets[0]]
        X = np.concatenate([self.inputs(searches[t], h.X, t) for t, h in histories.items()])
        Y = np.concatenate([h.log_y() - _uniform_log_value(self._members[t].space, h) for t, h in histories.items()])
        phase = "frontier-" + ("full" if first.to_blocks is None else f"knots{first.to_blocks.shape[1]}")
        every = [t for h in histories.values() for t in (*h.trials, *h.pending_trials)]
        warm = latest_hyperparameters(every, phase, X.shape[1])
        noise = self._members[self._targets[0]].noise_of(t for h in histories.values() for t in h.trials)
        model = fit_gp(X, -Y, self.input_bounds(first), noise=noise, warm_start=warm)
        attrs.set_system_attr(study, trial, attrs.BO_GP, gp_hyperparameters(model, phase))
        choice: dict[str, float] = {}
        best: tuple[float, float, np.ndarray] | None = None
        for target in candidates:
            found = self._best_at(model, target, searches[target], histories[target], rng)
            if found is None:
                continue
            score = found[0] - math.log(_cost(histories[target], histories))
            choice[f"{target:g}"] = score
            if best is None or score > best[0]:
                best = (score, target, found[1])
        attrs.set_system_attr(study, trial, attrs.FRONTIER_CHOICE, choice)
        if best is None:  # every optimum is a point already seen: a design point of the next target in turn
            target = self._fewest(study, trial, list(candidates))
            return target, self._members[target].next_design_point(histories[target], rng)
        return best[1], best[2]

    def _best_at(
        self, model: Any, target: float, search: SearchSpace, history: History, rng: np.random.Generator
    ) -> tuple[float, np.ndarray] | None:
        """The best unseen proposal at ``target`` and its log acquisition value, or None."""
        acqf = self._acquisition_at(model, target, search, history)
        result = self._members[target].optimize(acqf, search.space, history, search, rng)
        space, seen = self._members[target].space, history.seen()
        for x, value in zip(result.X, result.values, strict=True):
            candidate = space.project(search.blocks(x[None, :])[0])
            if not is_duplicate(candidate, seen, tol=1e-7):
                return float(value), candidate
        return None

    def _acquisition_at(self, model: Any, target: float, search: SearchSpace, history: History) -> Any:
        pending = self.inputs(search, history.pending, target) if history.pending.shape[0] else None
        acqf = log_nei(
            model, self.inputs(search, history.X, target), pending, mc_samples=self.options.mc_samples, seed=self.seed
        )
        return _at_target(acqf, target)


def _uniform_log_value(space: ConstraintSpace, history: History) -> float:
    """``log`` of the value of the trial nearest the uniform vector (the uniform vector itself once evaluated)."""
    distance = np.max(np.abs(history.X - space.uniform_vector()[None, :]), axis=1)
    return float(history.log_y()[int(np.argmin(distance))])


def _cost(history: History, histories: dict[float, History]) -> float:
    """The target's mean evaluation time relative to the study's (1 where no time is recorded)."""
    seconds = [attrs.evaluation_seconds(t) for t in history.trials]
    every = [attrs.evaluation_seconds(t) for h in histories.values() for t in h.trials]
    mine, overall = float(np.mean(seconds)) if seconds else 0.0, float(np.mean(every)) if every else 0.0
    return mine / overall if mine > 0 and overall > 0 else 1.0


def _at_target(acqf: AcquisitionFunction, target: float) -> AcquisitionFunction:
    """``acqf([x − t, t])`` as an acquisition function of ``x`` (a ``b x q x k`` tensor)."""
    from botorch.acquisition import AcquisitionFunction

    class AtTarget(AcquisitionFunction):
        def __init__(self) -> None:
            super().__init__(model=acqf.model)
            self.acqf = acqf

        def forward(self, X: torch.Tensor) -> torch.Tensor:
            column = torch.full((*X.shape[:-1], 1), target, dtype=X.dtype, device=X.device)
            return self.acqf(torch.cat([X - target, column], dim=-1))

    return AtTarget()
