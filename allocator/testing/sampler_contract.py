"""The one contract every sampler passes (run over all of them by ``tests/allocator/search/samplers/test_contract.py``).

Like ``optuna/testing/pytest_samplers.py``: each check builds real Optuna studies (in memory, or on the
storage URL it is given, e.g. a SQLite file) and runs the objective the way a study does, through
:func:`~allocator.search.samplers.suggest_allocation`.

* every evaluated vector satisfies the constraint within 1e-6 and the bounds; our own samplers'
  proposals are already on it (the projection moves them by less than 1e-9);
* the same seed gives the same proposals;
* a running trial (asked, its blocks suggested, not told) is a pending point: the next proposal differs;
* our samplers are stateless: a study resumed with a fresh sampler object continues exactly as an
  uninterrupted one would;
* single-point samplers (``max_trials == 1``) refuse a second proposal with one clear sentence.

Every sampler's frontier variant (:func:`~allocator.search.samplers.create_frontier_sampler`, a study of the targets of
:data:`CONTRACT_SPACES`) passes the same contract, target by target (the ``check_frontier_*`` functions): every
trial gets a target and meets that target's constraint, every target gets trials, and a pending point, a resumed
study and a single-point sampler behave as above at each target.

The checks of a capability assert that the sampler has it (as Optuna's ``testing/pytest_samplers.py``
runs each capability's tests only for the samplers that declare it): no check passes without checking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna

from allocator import ConstraintSpace
from allocator.errors import InputError
from allocator.search import trial_attributes as attrs
from allocator.search.samplers import (
    BlockSampler,
    ProposalSampler,
    TargetsInTurn,
    create_frontier_sampler,
    create_sampler,
    suggest_allocation,
)

#: A small space with the awkward parts: unequal weights, per-block bounds, one pinned block.
CONTRACT_SPACE = ConstraintSpace(
    weights=[1.0, 2.0, 1.0, 1.5, 1.0, 1.0, 3.0, 1.0],
    target=0.4,
    lower=[0.0, 0.0, 0.1, 0.0, 0.0, 0.3, 0.0, 0.0],
    upper=[0.9, 0.9, 0.9, 0.9, 0.9, 0.3, 0.9, 0.8],
)

#: A frontier study's spaces: two targets on the blocks and bounds of :data:`CONTRACT_SPACE`.
CONTRACT_SPACES = {
    target: ConstraintSpace(
        weights=CONTRACT_SPACE.weights, target=target, lower=CONTRACT_SPACE.lower, upper=CONTRACT_SPACE.upper
    )
    for target in (0.3, 0.5)
}

_SENSITIVITY = np.array([2.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.9])

SamplerFactory = Callable[[int], optuna.samplers.BaseSampler]


def contract_objective(vector: np.ndarray) -> float:
    """A positive, smooth stand-in for perplexity on :data:`CONTRACT_SPACE`."""
    s = np.asarray(vector, dtype=np.float64)
    return float(10.0 * np.exp(_SENSITIVITY @ (-np.log1p(-s) - s)))


def factory(name: str, space: ConstraintSpace = CONTRACT_SPACE, **options: Any) -> SamplerFactory:
    """A function of the seed building the sampler ``name`` for ``space``."""
    return lambda seed: create_sampler(name, space=space, seed=seed, **options)


def _objective(space: ConstraintSpace) -> Callable[[optuna.Trial], float]:
    def func(trial: optuna.Trial) -> float:
        return contract_objective(suggest_allocation(trial, space))

    return func


def _n(sampler: optuna.samplers.BaseSampler, n: int) -> int:
    limit = getattr(sampler, "max_trials", None)
    return n if limit is None else min(n, int(limit))


def _vectors(study: optuna.Study) -> np.ndarray:
    return np.array([t.user_attrs["vector"] for t in study.trials if "vector" in t.user_attrs])


def check_feasible(make: SamplerFactory, *, n_trials: int = 10, storage: str | None = None) -> np.ndarray:
    """Every evaluated vector is on the constraint within 1e-6; block samplers' proposals need no repair."""
    sampler = make(0)
    study = optuna.create_study(sampler=sampler, storage=storage)
    study.optimize(_objective(CONTRACT_SPACE), n_trials=_n(sampler, n_trials))
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE, f"trial {t.number} is {t.state}"
        vec = np.asarray(t.user_attrs["vector"])
        assert CONTRACT_SPACE.contains(vec, tol=1e-6), f"trial {t.number} evaluated an infeasible {vec}"
        lo, hi = CONTRACT_SPACE.lower_array(), CONTRACT_SPACE.upper_array()
        assert np.all(vec >= lo) and np.all(vec <= hi), f"trial {t.number} leaves the bounds"
        if isinstance(sampler, BlockSampler):
            assert t.user_attrs[attrs.PROJECTION_DISTANCE] <= 1e-9, (
                f"trial {t.number}: the proposal was off the constraint"
            )
    return _vectors(study)


def check_reproducible(make: SamplerFactory, *, n_trials: int = 8) -> None:
    """The same seed gives the same evaluated vectors."""
    runs = []
    for _ in range(2):
        sampler = make(123)
        study = optuna.create_study(sampler=sampler)
        study.optimize(_objective(CONTRACT_SPACE), n_trials=_n(sampler, n_trials))
        runs.append(_vectors(study))
    np.testing.assert_array_equal(runs[0], runs[1])


def check_pending_not_duplicated(make: SamplerFactory, *, n_done: int = 8, storage: str | None = None) -> None:
    """A trial asked and suggested but not told is pending: the next proposal is a different point."""
    sampler = make(7)
    assert getattr(sampler, "max_trials", None) is None, "only samplers with many points have pending points"
    study = optuna.create_study(sampler=sampler, storage=storage)
    study.optimize(_objective(CONTRACT_SPACE), n_trials=n_done)
    running = study.ask()
    pending = suggest_allocation(running, CONTRACT_SPACE)
    nxt = study.ask()
    proposal = suggest_allocation(nxt, CONTRACT_SPACE)
    assert np.max(np.abs(proposal - pending)) > 1e-6, "the pending point was proposed again"
    done = _vectors(study)[:n_done]
    assert np.min(np.max(np.abs(done - proposal[None, :]), axis=1)) > 1e-9, "an evaluated point was proposed again"


def check_resumable(make: SamplerFactory, *, storage: str, n_first: int = 5, n_total: int = 9) -> None:
    """Block samplers keep no state: a study continued by a fresh sampler object (another process, a
    resume) proposes exactly what one uninterrupted sampler would."""
    assert isinstance(make(0), BlockSampler), "only our block samplers promise to keep no state"
    whole = optuna.create_study(sampler=make(5))
    whole.optimize(_objective(CONTRACT_SPACE), n_trials=_n(whole.sampler, n_total))
    first = optuna.create_study(sampler=make(5), storage=storage, study_name="resume")
    first.optimize(_objective(CONTRACT_SPACE), n_trials=_n(first.sampler, n_first))
    resumed = optuna.load_study(study_name="resume", storage=storage, sampler=make(5))
    remaining = _n(resumed.sampler, n_total) - len(resumed.trials)
    if remaining > 0:
        resumed.optimize(_objective(CONTRACT_SPACE), n_trials=remaining)
    np.testing.assert_allclose(_vectors(resumed), _vectors(whole), rtol=0, atol=1e-12)


def _refuses_one_more(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> None:
    """One more trial of a single-point sampler's study fails with one sentence that says why."""
    try:
        study.optimize(objective, n_trials=1)
    except InputError as err:
        message = str(err)
        assert "single point" in message and message.count(". ") == 0, message
    else:  # pragma: no cover - the assertion below reports it
        raise AssertionError("a single-point sampler accepted a trial too many")


def check_single_point(make: SamplerFactory) -> None:
    """A sampler with ``max_trials == 1`` refuses a second proposal with one clear sentence."""
    sampler = make(0)
    assert getattr(sampler, "max_trials", None) == 1, "only single-point samplers refuse a second proposal"
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective(CONTRACT_SPACE), n_trials=1)
    _refuses_one_more(study, _objective(CONTRACT_SPACE))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL], states


# ---------------------------------------------------------------------------- frontier variants


def frontier_factory(
    name: str, spaces: Mapping[float, ConstraintSpace] = CONTRACT_SPACES, **options: Any
) -> SamplerFactory:
    """A function of the seed building the frontier variant of sampler ``name`` for ``spaces``."""
    return lambda seed: create_frontier_sampler(name, spaces=spaces, seed=seed, **options)


def _frontier_objective(trial: optuna.Trial) -> float:
    trial.relative_params  # noqa: B018 - a sampler that learns across targets chooses the target when it samples
    target = attrs.trial_target(trial)  # type: ignore[arg-type]
    assert target in CONTRACT_SPACES, f"trial {trial.number} has no target of the study: {target!r}"
    return contract_objective(suggest_allocation(trial, CONTRACT_SPACES[target]))


def _members(sampler: optuna.samplers.BaseSampler) -> list[optuna.samplers.BaseSampler]:
    """The samplers that propose: each target's for targets taking turns, else the frontier sampler itself."""
    if isinstance(sampler, TargetsInTurn):
        return [sampler.sampler_for(t) for t in sampler.targets]
    return [sampler]


def _frontier_n(sampler: optuna.samplers.BaseSampler, n: int) -> int:
    limit = getattr(_members(sampler)[0], "max_trials", None)
    return n if limit is None else min(n, int(limit) * len(CONTRACT_SPACES))


def _placed(study: optuna.Study) -> list[tuple[float, np.ndarray]]:
    return [(float(t.user_attrs[attrs.TARGET]), np.asarray(t.user_attrs["vector"])) for t in study.trials]


def check_frontier_feasible(make: SamplerFactory, *, n_trials: int = 8, storage: str | None = None) -> None:
    """Every trial gets one of the study's targets and evaluates a vector on that target's constraint (our
    samplers' proposals need no repair); every target gets trials."""
    sampler = make(0)
    assert tuple(getattr(sampler, "targets", ())) == tuple(sorted(CONTRACT_SPACES)), "the sampler lost a target"
    study = optuna.create_study(sampler=sampler, storage=storage)
    study.optimize(_frontier_objective, n_trials=_frontier_n(sampler, n_trials))
    ours = all(isinstance(m, ProposalSampler) for m in _members(sampler))
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE, f"trial {t.number} is {t.state}"
        space = CONTRACT_SPACES[t.user_attrs[attrs.TARGET]]
        vec = np.asarray(t.user_attrs["vector"])
        assert space.contains(vec, tol=1e-6), f"trial {t.number} misses its target with {vec}"
        assert np.all(vec >= space.lower_array()) and np.all(vec <= space.upper_array()), f"trial {t.number}"
        if ours:
            assert t.user_attrs[attrs.PROJECTION_DISTANCE] <= 1e-9, f"trial {t.number}: the proposal was off"
    assert {target for target, _ in _placed(study)} == set(CONTRACT_SPACES), "a target got no trial"


def check_frontier_reproducible(make: SamplerFactory, *, n_trials: int = 6) -> None:
    """The same seed gives the same targets and vectors."""
    runs = []
    for _ in range(2):
        sampler = make(123)
        study = optuna.create_study(sampler=sampler)
        study.optimize(_frontier_objective, n_trials=_frontier_n(sampler, n_trials))
        runs.append(_placed(study))
    assert [t for t, _ in runs[0]] == [t for t, _ in runs[1]]
    np.testing.assert_array_equal(np.array([v for _, v in runs[0]]), np.array([v for _, v in runs[1]]))


def check_frontier_pending_not_duplicated(make: SamplerFactory, *, n_done: int = 6, storage: str | None = None) -> None:
    """Trials asked and suggested but not told are pending: no two of them, at one target, get the same point,
    and none repeats an evaluated point of its target (more pending trials than targets: two share one)."""
    sampler = make(7)
    assert getattr(_members(sampler)[0], "max_trials", None) is None, "only samplers with many points"
    study = optuna.create_study(sampler=sampler, storage=storage)
    study.optimize(_frontier_objective, n_trials=n_done)
    placed = _placed(study)
    for _ in range(len(CONTRACT_SPACES) + 1):
        trial = study.ask()
        trial.relative_params  # noqa: B018 - the target is chosen when the trial samples
        target = float(trial.user_attrs[attrs.TARGET])
        proposal = suggest_allocation(trial, CONTRACT_SPACES[target])
        for other, vector in placed:
            assert other != target or np.max(np.abs(proposal - vector)) > 1e-9, "a point was proposed again"
        placed.append((target, proposal))


def check_frontier_resumable(make: SamplerFactory, *, storage: str, n_first: int = 4, n_total: int = 7) -> None:
    """A frontier study continued by a fresh sampler object proposes exactly what one uninterrupted sampler
    would, targets included."""
    assert all(isinstance(m, ProposalSampler) for m in _members(make(0))), "only our samplers keep no state"
    whole = optuna.create_study(sampler=make(5))
    whole.optimize(_frontier_objective, n_trials=_frontier_n(whole.sampler, n_total))
    first = optuna.create_study(sampler=make(5), storage=storage, study_name="resume")
    first.optimize(_frontier_objective, n_trials=_frontier_n(first.sampler, n_first))
    resumed = optuna.load_study(study_name="resume", storage=storage, sampler=make(5))
    remaining = _frontier_n(resumed.sampler, n_total) - len(resumed.trials)
    if remaining > 0:
        resumed.optimize(_frontier_objective, n_trials=remaining)
    expected, got = _placed(whole), _placed(resumed)
    assert [t for t, _ in got] == [t for t, _ in expected]
    np.testing.assert_allclose(np.array([v for _, v in got]), np.array([v for _, v in expected]), rtol=0, atol=1e-12)


def check_frontier_single_point(make: SamplerFactory) -> None:
    """A single-point sampler's frontier variant gives each target its one trial, then refuses in one sentence."""
    sampler = make(0)
    assert getattr(_members(sampler)[0], "max_trials", None) == 1, "only single-point samplers refuse"
    study = optuna.create_study(sampler=sampler)
    study.optimize(_frontier_objective, n_trials=len(CONTRACT_SPACES))
    assert sorted(t for t, _ in _placed(study)) == sorted(CONTRACT_SPACES), "each target gets its one trial"
    _refuses_one_more(study, _frontier_objective)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * len(CONTRACT_SPACES) + [optuna.trial.TrialState.FAIL]
