"""Running a study: trials until the study has its number of finished (COMPLETE) trials, with any number of
workers on one database.

Trials run under ``study.optimize`` one at a time, so Optuna's heartbeats run during every trial; a worker
killed mid-trial leaves a RUNNING trial that another worker (or ``study resume``) fails once its heartbeat is
20 s stale, and Optuna's retry callback re-enqueues it with the same parameters: nothing finished is lost
or evaluated twice, and the interrupted trial is evaluated again. An interrupted worker (Ctrl-C, SIGTERM)
re-enqueues its own trial at once.

Exactly N: a worker starts a trial only while ``COMPLETE + RUNNING + WAITING < N``; two workers can still
both start the N-th trial at the same moment, so a trial yields (is pruned, marked ``surplus``) when
N trials with lower numbers are complete, running or waiting. A worker ends when N trials are complete,
and waits (failing stale trials) while the remaining slots are held by other workers' running trials.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from allocator._errors import StorageError, first_line
from allocator.samplers import BlockSampler, create_sampler, suggest_allocation
from storage import CONNECTION_ERRORS, is_connection_error
from studies._session import StudySession

RECONNECT_S = 120.0

SURPLUS_ATTR = "surplus"
HELDOUT_ATTR = "heldout_perplexity"


class Reporter(Protocol):
    """What the runner tells the user (the CLI draws progress bars; tests may record)."""

    def status(self, message: str) -> None: ...

    def trial_started(self, number: int, sequences: int) -> Callable[[int], None]: ...

    def trial_finished(self, trial: optuna.trial.FrozenTrial, complete: int, target: int) -> None: ...


class SilentReporter:
    def status(self, message: str) -> None:
        pass

    def trial_started(self, number: int, sequences: int) -> Callable[[int], None]:
        return lambda n: None

    def trial_finished(self, trial: optuna.trial.FrozenTrial, complete: int, target: int) -> None:
        pass


@dataclass(frozen=True)
class RunResult:
    complete: int
    target: int
    evaluated_here: int


def make_sampler(session: StudySession) -> optuna.samplers.BaseSampler:
    """The study's sampler; ``greedy`` is the uniform vector with the greedy split (TEAL's greedy-uniform).

    Our samplers make their proposals under the database's proposal lock, so workers never propose the
    same point at the same moment.
    """
    config = session.config
    name = "uniform" if config.sampler.name == "greedy" else config.sampler.name
    sampler = create_sampler(name, space=session.space, seed=config.seed, **config.sampler.options)
    if isinstance(sampler, BlockSampler):
        sampler.serialize_with(lambda: session.database.proposal_lock(config.name))
    return sampler


def target_trials(session: StudySession, sampler: optuna.samplers.BaseSampler, requested: int | None) -> int:
    """The number of COMPLETE trials to reach: the request (default: the config's), capped by the sampler."""
    target = requested if requested is not None else session.config.trials
    limit = getattr(sampler, "max_trials", None)
    return min(target, limit) if limit is not None else target


def load_optuna_study(session: StudySession, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.load_study(study_name=session.config.name, storage=session.database.optuna_storage, sampler=sampler)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (docker stop, kill) like Ctrl-C, so the running trial is re-enqueued."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _requeue(study: optuna.Study, number: int) -> None:
    """Fail-and-retry the trial this worker was running when interrupted (same params, as a WAITING trial)."""
    from optuna.exceptions import ExperimentalWarning

    trial = next((t for t in study.get_trials(deepcopy=True) if t.number == number), None)
    if trial is None or trial.state not in (TrialState.FAIL, TrialState.RUNNING):
        return
    if trial.state == TrialState.RUNNING:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)


def _counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def _wait_for_database(session: StudySession, error: Exception, reporter: Reporter, timeout_s: float) -> None:
    """Wait until the database answers again; one clear error if it stays away for ``timeout_s``."""
    from sqlalchemy import text

    deadline = time.monotonic() + timeout_s
    while True:
        reporter.status("database connection lost; reconnecting")
        try:
            with session.database.optuna_storage.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return
        except CONNECTION_ERRORS:
            if time.monotonic() >= deadline:
                reason = first_line(error)
                raise StorageError(
                    f"Lost the database {session.database.masked_url} for {timeout_s:.0f} s ({reason}); finished "
                    f"trials are stored, and `sparsealloc study resume {session.config.name}` continues."
                ) from error
            time.sleep(2.0)


def run_study(
    session: StudySession,
    *,
    n_trials: int | None = None,
    reporter: Reporter | None = None,
    poll_s: float = 2.0,
    reconnect_s: float = RECONNECT_S,
) -> RunResult:
    """Run trials until the study has ``n_trials`` (default: the config's) COMPLETE trials.

    A lost database connection is waited out for ``reconnect_s`` seconds: the trial that was running is
    re-enqueued once the database is back, and the worker goes on.
    """
    reporter = reporter or SilentReporter()
    sampler = make_sampler(session)
    study = load_optuna_study(session, sampler)
    target = target_trials(session, sampler, n_trials)
    space = session.space
    heldout_policy = session.config.evaluation.heldout
    running_here: dict[str, int | None] = {"number": None}
    evaluated = 0

    def objective(trial: optuna.Trial) -> float:
        running_here["number"] = trial.number
        earlier = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
        if sum(1 for t in earlier if t.number < trial.number) >= target:
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise optuna.TrialPruned("surplus: the study's last slots were taken by trials with lower numbers")
        vector = suggest_allocation(trial, space)
        advance = reporter.trial_started(trial.number, session.tokens.calibration.shape[0])
        done = [0]

        def on_batch(sequences: int, _nll: float) -> bool:
            advance(sequences - done[0])
            done[0] = sequences
            return False

        evaluation = session.objective(vector, on_batch=on_batch)
        trial.set_user_attr("measured_sparsity", evaluation.measured_sparsity)
        trial.set_user_attr("model_sparsity", session.sparse_model.model_sparsity(vector))
        trial.set_user_attr("mean_nll", evaluation.mean_nll)
        trial.set_user_attr("seconds", evaluation.seconds)
        if heldout_policy == "best":
            finished = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
            if not finished or evaluation.perplexity < min(v for v in finished if v is not None):
                trial.set_user_attr(HELDOUT_ATTR, session.objective.heldout(vector).perplexity)
        return evaluation.perplexity

    with _sigterm_as_interrupt():
        while True:
            try:
                optuna.storages.fail_stale_trials(study)  # stale trials are failed and re-enqueued (retry callback)
                counts = _counts(study)
                complete = counts[TrialState.COMPLETE]
                if complete >= target:
                    break
                running, waiting = counts[TrialState.RUNNING], counts[TrialState.WAITING]
                if complete + running >= target and waiting == 0:
                    reporter.status(f"{complete}/{target} complete; waiting for {running} running trial(s) elsewhere")
                    time.sleep(poll_s)
                    continue
                running_here["number"] = None
                try:
                    study.optimize(objective, n_trials=1)
                except KeyboardInterrupt:
                    if running_here["number"] is not None:
                        _requeue(study, running_here["number"])
                    raise
                number = running_here["number"]
                if number is None:
                    continue
                frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
                if frozen.state == TrialState.COMPLETE:
                    evaluated += 1
                reporter.trial_finished(frozen, _counts(study)[TrialState.COMPLETE], target)
                running_here["number"] = None
            except Exception as error:
                if not is_connection_error(error):
                    raise
                _wait_for_database(session, error, reporter, reconnect_s)
                if running_here["number"] is not None:
                    _requeue(study, running_here["number"])  # its result may not have been stored
                    running_here["number"] = None
        complete = _counts(study)[TrialState.COMPLETE]
    return RunResult(complete=complete, target=target, evaluated_here=evaluated)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The COMPLETE trial with the lowest perplexity, or None."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    complete = [t for t in complete if math.isfinite(t.value)]
    return min(complete, key=lambda t: t.value) if complete else None
