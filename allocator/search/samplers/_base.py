"""Conventions shared by every sampler and by the objective side of a study.

* The objective asks for its block vector with :func:`suggest_allocation`: it suggests every ``block_i``
  as ``suggest_float(name, l_i, u_i)``, applies the one documented projection (``ConstraintSpace.project``)
  if the vector is off the constraint (Optuna's TPE and CMA-ES know nothing of it), and records the vector
  actually evaluated as the user attribute ``"vector"`` (plus ``"projection_distance"``).
* Samplers learn from :func:`~allocator.search.trial_attributes.evaluated_vector` (that attribute, falling back
  to the params), and minimise positive values (perplexity); model-based samplers model ``log(value)``.
* Our own samplers subclass :class:`BlockSampler` (one target), or its base :class:`ProposalSampler` (a
  frontier sampler that chooses each trial's target itself): they propose the whole vector at once through
  relative sampling, hold no state of their own (everything is rebuilt from ``study.get_trials``, so several
  processes can share a study and a study can be resumed), draw their randomness from the seed and the
  trial number (same seed + same history = same proposal), and write the proposal into the trial's system
  attributes at sampling time, so other workers see it as a pending point before the objective has even
  called ``suggest_float``.
"""

from __future__ import annotations

import abc
import contextlib
import math
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from allocator.errors import InputError
from allocator.search import trial_attributes as attrs
from allocator.search._constraint import ConstraintSpace
from allocator.search._optuna_internals import is_multi_objective
from allocator.search.samplers._registry import SamplerOptions, validate_options
from allocator.search.samplers._split import SplitSearch, same_share

if TYPE_CHECKING:
    from optuna.study import Study

# A suggestion this close to the constraint (relative, on the equality) is evaluated as is.
_ON_CONSTRAINT_RTOL = 1e-10


def distributions(space: ConstraintSpace) -> dict[str, FloatDistribution]:
    """The Optuna distributions of the block parameters: ``block_i ~ FloatDistribution(l_i, u_i)``."""
    return {
        name: FloatDistribution(lo, hi)
        for name, lo, hi in zip(space.param_names, space.lower, space.upper, strict=True)
    }


def suggest_allocation(trial: optuna.Trial, space: ConstraintSpace) -> np.ndarray:
    """Suggest the block vector of ``trial`` and return the vector to evaluate, a ``d`` array on the constraint.

    Every ``block_i`` is suggested as ``trial.suggest_float("block_i", l_i, u_i)``. Our samplers propose
    vectors that already satisfy the constraint; Optuna's own samplers (TPE, CMA-ES, random) do not, and
    their suggestion ``y`` is replaced by its Euclidean projection ``argmin_s ‖s − y‖`` onto
    ``{wᵀs = t·Σw, l ≤ s ≤ u}`` (:meth:`ConstraintSpace.project`). The evaluated vector and the distance
    moved are recorded as the user attributes ``"vector"`` and ``"projection_distance"``, so that every
    sampler learns from what was really evaluated.
    """
    suggested = np.array(
        [
            trial.suggest_float(name, lo, hi)
            for name, lo, hi in zip(space.param_names, space.lower, space.upper, strict=True)
        ],
        dtype=np.float64,
    )
    on_constraint = abs(float(suggested @ space.weight_array()) - space.rhs) <= _ON_CONSTRAINT_RTOL * space.rhs
    vector = suggested if on_constraint else space.project(suggested)
    distance = float(np.linalg.norm(vector - suggested))
    attrs.record_vector(trial, vector, distance)
    return vector


def pending_vector(trial: FrozenTrial, space: ConstraintSpace) -> np.ndarray | None:
    """The point a RUNNING or WAITING trial will evaluate, as far as storage knows it (on the constraint), or None."""
    vec = attrs.pending_params(trial, space.dim)
    if vec is None:
        return None
    return vec if space.contains(vec, tol=1e-9) else space.project(vec)


@dataclass(frozen=True)
class History:
    """What a sampler knows about a study, rebuilt from storage for every proposal.

    Attributes:
        X: An ``n x d`` array of the vectors evaluated by COMPLETE trials.
        y: The ``n`` values of those trials.
        numbers: The ``n`` trial numbers.
        pending: A ``k x d`` array of the points RUNNING/WAITING trials (other than this one) will evaluate.
        trials: The COMPLETE trials themselves (for samplers that read their system attributes).
        pending_trials: The RUNNING/WAITING trials whose point is known, aligned with ``pending``.
    """

    X: np.ndarray
    y: np.ndarray
    numbers: np.ndarray
    pending: np.ndarray
    trials: tuple[FrozenTrial, ...]
    pending_trials: tuple[FrozenTrial, ...]

    @property
    def n(self) -> int:
        """The number of COMPLETE trials the history holds."""
        return int(self.X.shape[0])

    def log_y(self) -> np.ndarray:
        """``log(value)``; raises when a value is not positive (the samplers model log perplexity)."""
        bad = np.flatnonzero(~(self.y > 0))
        if bad.size:
            number = int(self.numbers[bad[0]])
            raise InputError(
                f"Trial {number} has value {self.y[bad[0]]!r}, but the samplers minimise positive values "
                "(perplexity) and model their logarithm."
            )
        return np.log(self.y)

    def best(self) -> tuple[np.ndarray, float] | None:
        """The evaluated vector with the lowest value and that value, or None with no finished trial."""
        if self.n == 0:
            return None
        i = int(np.argmin(self.y))
        return self.X[i].copy(), float(self.y[i])

    def seen(self) -> np.ndarray:
        """Every evaluated and pending point, an ``(n + k) x d`` array."""
        return np.concatenate([self.X, self.pending], axis=0)


def collect_history(study: Study, trial: FrozenTrial, space: ConstraintSpace, *, share: float | None = None) -> History:
    """Read every trial of ``study`` (except ``trial``) into a :class:`History`; with ``share``, only the trials
    at that share of the greedy split (a study that searches the split: values at other shares do not compare)."""
    xs: list[np.ndarray] = []
    ys: list[float] = []
    numbers: list[int] = []
    done: list[FrozenTrial] = []
    pending: list[np.ndarray] = []
    pending_trials: list[FrozenTrial] = []
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or (share is not None and not same_share(attrs.placed_share(t), share)):
            continue
        if t.state == TrialState.COMPLETE:
            vec = attrs.evaluated_vector(t, space.dim)
            if vec is None or t.value is None or math.isnan(float(t.value)):
                continue
            xs.append(vec)
            ys.append(float(t.value))
            numbers.append(t.number)
            done.append(t)
        elif t.state in (TrialState.RUNNING, TrialState.WAITING):
            vec = pending_vector(t, space)
            if vec is not None:
                pending.append(vec)
                pending_trials.append(t)
    d = space.dim
    y = np.asarray(ys, dtype=np.float64)
    if y.size and not np.all(np.isfinite(y)):
        # An infinite perplexity (overflow) is "worse than anything seen": cap it at the worst finite value.
        finite = y[np.isfinite(y)]
        y = np.where(np.isfinite(y), y, finite.max() * 10.0 if finite.size else 1e300)
    return History(
        X=np.asarray(xs, dtype=np.float64).reshape(-1, d),
        y=y,
        numbers=np.asarray(numbers, dtype=np.int64),
        pending=np.asarray(pending, dtype=np.float64).reshape(-1, d),
        trials=tuple(done),
        pending_trials=tuple(pending_trials),
    )


def trial_rng(seed: int, number: int, salt: int = 0) -> np.random.Generator:
    """The random generator of one proposal, derived from the sampler's seed and the trial number."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(number), int(salt)]))


def is_duplicate(vector: np.ndarray, points: np.ndarray, tol: float = 1e-9) -> bool:
    """True if ``vector`` is within ``tol`` (max-norm) of a row of the ``k x d`` array ``points``."""
    if points.shape[0] == 0:
        return False
    return bool(np.any(np.max(np.abs(points - vector[None, :]), axis=1) <= tol))


class ProposalSampler(BaseSampler):
    """Base of our samplers: one proposal per trial, on the constraint, made statelessly and published at once.

    This class holds the one publish path (:meth:`sample_relative`): check the study, then under the proposal
    lock place the trial (:meth:`place`: its constraint space and its proposal), clip the proposal into that
    space's bounds (so Optuna accepts it rather than falling back to independent sampling) and write it to
    the trial's system attributes as a pending point. The relative search space is always the space's
    ``FloatDistribution(l_b, u_b)`` per ``block_b``. Single-target samplers subclass :class:`BlockSampler`.

    Args:
        space: The constraint space of the study (of a frontier study: any target's, whose bounds and block
            parameters every target shares).
        seed: The seed. None draws one at random (then proposals are not reproducible, and workers sharing
            a study do not share a seed).
        options: The sampler's validated options (an instance of its ``Options`` model); or give them as
            keyword arguments, validated here.
    """

    #: How many proposals the sampler has; the study runner stops after that many trials (None: no limit).
    max_trials: ClassVar[int | None] = None
    #: The name under which the registry knows the sampler (set by ``register_sampler``).
    name: ClassVar[str] = "block"
    #: The sampler's options model.
    Options: ClassVar[type[SamplerOptions]] = SamplerOptions

    def __init__(
        self,
        *,
        space: ConstraintSpace,
        seed: int | None = None,
        options: SamplerOptions | None = None,
        **values: Any,
    ) -> None:
        if options is not None and values:
            raise InputError(f"Give the options of sampler {self.name!r} either as `options` or as keywords, not both.")
        self.options = validate_options(self.Options, self.name, options if options is not None else values)
        if not isinstance(space, ConstraintSpace):
            raise InputError(f"`space` must be a ConstraintSpace; got {type(space).__name__}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise InputError(f"`seed` must be an integer or None; got {seed!r}.")
        self._space = space
        self._seed = int(seed) if seed is not None else secrets.randbits(31)
        self._proposal_lock: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext

    @property
    def space(self) -> ConstraintSpace:
        """The constraint space the sampler proposes on."""
        return self._space

    @property
    def seed(self) -> int:
        """The seed every proposal's random generator derives from (drawn at random if none was given)."""
        return self._seed

    # ------------------------------------------------------------------ Optuna interface

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Optuna's hook: every ``block_b`` with its bounds, so that the whole vector is proposed at once."""
        return dict(distributions(self._space))

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Optuna's hook and the one publish path: check the study, then under the proposal lock place the trial, clip
        its proposal into the bounds and record it on the trial before returning it."""
        if not search_space or not self.proposes_for(trial):
            return {}
        _check_study(study)
        attrs.set_system_attr(study, trial, attrs.SAMPLER, self.name)
        # Workers that sample at the same moment would see the same history and could propose the same point;
        # under the study's proposal lock each one reads the history, proposes and publishes in turn.
        with self._proposal_lock():
            space, proposal = self.place(study, trial)
            vector = np.clip(np.asarray(proposal, dtype=np.float64), space.lower_array(), space.upper_array())
            attrs.set_system_attr(study, trial, attrs.PROPOSAL, [float(v) for v in vector])
        return {name: float(v) for name, v in zip(space.param_names, vector, strict=True) if name in search_space}

    def serialize_with(self, lock: Callable[[], AbstractContextManager[Any]]) -> None:
        """Make proposals one at a time across processes: ``lock()`` is held while a proposal is made and published.

        The study runner passes its database's lock (a PostgreSQL advisory lock, or a file lock beside a SQLite
        file); without one, concurrent workers may duplicate a proposal.
        """
        self._proposal_lock = lock

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """Optuna's hook for a parameter outside the blocks (one an objective suggests itself): a seeded random draw."""
        # Parameters other than the blocks (an objective may suggest its own) are drawn at random.
        sampler = optuna.samplers.RandomSampler(seed=int(trial_rng(self._seed, trial.number, 7).integers(2**31)))
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    # ------------------------------------------------------------------ for subclasses

    def proposes_for(self, trial: FrozenTrial) -> bool:
        """Whether ``trial`` gets a proposal (a frontier sampler leaves a retried trial its enqueued vector)."""
        return True

    @abc.abstractmethod
    def place(self, study: Study, trial: FrozenTrial) -> tuple[ConstraintSpace, np.ndarray]:
        """The constraint space ``trial`` evaluates on and its proposal there (a ``d`` array on the constraint),
        given what storage holds; called under the proposal lock."""

    def rng(self, trial: FrozenTrial, salt: int = 0) -> np.random.Generator:
        """The random generator of ``trial``'s proposal (see :func:`trial_rng`)."""
        return trial_rng(self._seed, trial.number, salt)


class BlockSampler(ProposalSampler):
    """Base of our single-target samplers: propose the whole block vector at once, on the constraint, statelessly.

    Subclasses implement :meth:`propose` from the study's :class:`History`; a space with a single point
    (every block pinned) gets that point without asking them.
    """

    _split: SplitSearch | None = None

    def search_split(self, split: SplitSearch) -> None:
        """Search the site split too (``sparsity.split: search``): every trial is placed at a share of the greedy
        split first, the no-search start points before any proposal (see :mod:`._split`)."""
        self._split = split

    def place(self, study: Study, trial: FrozenTrial) -> tuple[ConstraintSpace, np.ndarray]:
        """The study's space and the subclass's proposal from the trial's history (the one point of a singleton space
        without asking); a study that searches the split places the trial at a share first, and a no-search start
        point or a share probe gets the uniform vector."""
        share = None
        if self._split is not None:
            place = self._split.place(study, trial)
            share = place.share
            record = {"share": share, "no_search": place.no_search} | ({"probe": True} if place.probe else {})
            attrs.set_system_attr(study, trial, attrs.SPLIT_PLACE, record)
            if place.uniform:
                return self._space, self._space.uniform_vector()
        history = collect_history(study, trial, self._space, share=share)
        if self._space.is_singleton:
            return self._space, self._space.center()
        return self._space, self.propose(study, trial, history)

    @abc.abstractmethod
    def propose(self, study: Study, trial: FrozenTrial, history: History) -> np.ndarray:
        """The next block vector (a ``d`` array on the constraint) given what storage holds."""


def _check_study(study: Study) -> None:
    if is_multi_objective(study):
        raise InputError("The block samplers optimise a single objective, but the study has several directions.")
    if study.direction != StudyDirection.MINIMIZE:
        raise InputError("The block samplers minimise perplexity, but the study's `direction` is 'maximize'.")
