"""Running a study: trials until the study has its number of finished (COMPLETE) trials, with any number of
workers on one database.

As Optuna splits ``study.optimize`` into a loop (``_optimize_sequential``) and one trial (``_run_trial``),
:func:`run_study` is the loop and :class:`TrialObjective` the objective of one trial; each trial runs
under ``study.optimize(n_trials=1)``, so Optuna's heartbeats run during it.

Nothing finished is lost or evaluated twice:

* A worker killed mid-trial leaves a RUNNING trial that another worker (or ``study resume``) fails once its
  heartbeat is 20 s stale (database clock); Optuna's retry callback re-enqueues it with the same parameters.
* A worker killed after creating its trial but before its first heartbeat leaves a RUNNING trial with no
  heartbeat at all, which Optuna alone never fails: every loop gives such trials a heartbeat
  (:func:`storage.heartbeat_orphans`), so they go stale and are retried the same way.
* An interrupted worker (Ctrl-C, SIGTERM) re-enqueues its own trial at once, and ends in one sentence: the
  interrupt is carried past Optuna (which would store the trial as failed and log its traceback) and comes
  only where stopping is safe (:mod:`studies._interrupts`).
* A study deleted while a worker runs it (``study delete --force``) ends that worker in one sentence.

Exactly N: a worker starts a trial only while ``COMPLETE + RUNNING + WAITING < N``; two workers can still
both start the N-th trial at the same moment, so a trial yields (is pruned, marked ``surplus``) when
N trials with lower numbers are complete, running or waiting. A worker ends when N trials are complete,
and waits (failing stale trials) while the remaining slots are held by other workers' running trials.

A lost database *connection* is waited out for ``reconnect_s`` seconds without progress; any other database
error (a read-only file, a full disk, a corrupt file) ends the run at once with one sentence.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from allocator.errors import first_line
from allocator.search import rdb_storage, study_id
from allocator.search import trial_attributes as attrs
from allocator.search.samplers import (
    ProposalSampler,
    SplitSearch,
    TargetsInTurn,
    create_frontier_sampler,
    create_sampler,
    sampler_entry,
    suggest_allocation,
)
from storage import CONNECTION_ERRORS, StorageError, database_error, heartbeat_orphans, is_connection_error, redact
from studies._interrupts import Interrupts
from studies._session import StudySession

RECONNECT_S = 120.0


class Reporter(Protocol):
    """What the runner tells the user (the CLI draws progress bars; tests may record)."""

    def status(self, message: str) -> None:
        """Say what the run is doing now (loading, calibrating, waiting for another worker...)."""
        ...

    def trial_started(self, number: int, sequences: int) -> Callable[[int], None]:
        """Trial ``number`` starts on ``sequences`` sequences; returns the callback told how many are done."""
        ...

    def trial_finished(self, trial: optuna.trial.FrozenTrial, complete: int, target: int) -> None:
        """``trial`` ended; the study now has ``complete`` of the ``target`` finished trials it runs to."""
        ...


class SilentReporter:
    """A reporter that says nothing: for library calls and tests that only want the result."""

    def status(self, message: str) -> None:
        """Tell the user nothing."""

    def trial_started(self, number: int, sequences: int) -> Callable[[int], None]:
        """Say nothing, and return a progress callback that says nothing either."""
        return lambda n: None

    def trial_finished(self, trial: optuna.trial.FrozenTrial, complete: int, target: int) -> None:
        """Tell the user nothing."""


@dataclass(frozen=True)
class RunResult:
    """How a run ended: the study's finished trials, the number it ran to, and how many this process evaluated."""

    complete: int
    target: int
    evaluated_here: int


def make_sampler(session: StudySession) -> optuna.samplers.BaseSampler:
    """The study's sampler, built from its registered name and validated options.

    Our samplers make their proposals under the database's proposal lock, so workers never propose the
    same point at the same moment.
    """
    config = session.config
    name, options = config.sampler.name, config.sampler.options
    if config.sparsity.is_frontier:
        per_target = config.sparsity.split == "search"  # each target its own start points and share
        sampler = create_frontier_sampler(
            name, spaces=session.spaces, seed=config.seed, per_target=per_target, **options
        )
    else:
        sampler = create_sampler(name, space=session.space, seed=config.seed, **options)
    if isinstance(sampler, ProposalSampler | TargetsInTurn):
        sampler.serialize_with(lambda: session.database.proposal_lock(config.name))
    if config.sparsity.split == "search":  # the configuration checked that the sampler can (`searches_split`)
        greedy = config.sparsity.greedy
        sampler.search_split(
            SplitSearch(shares=tuple(greedy.start_shares), default=greedy.blend, probes=greedy.share_probes)
        )
    return sampler


def target_trials(session: StudySession, requested: int | None) -> int:
    """The number of COMPLETE trials to reach: the request (default: the config's), capped by the sampler
    (per target: a frontier study of K targets gives the uniform baseline K trials)."""
    target = requested if requested is not None else session.config.trials
    limit = sampler_entry(session.config.sampler.name).max_trials
    return min(target, limit * len(session.config.sparsity.targets)) if limit is not None else target


def load_optuna_study(session: StudySession, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The session's study as an Optuna study on its database (with ``sampler`` when it will ask for trials)."""
    return optuna.load_study(study_name=session.config.name, storage=session.database.optuna_storage, sampler=sampler)


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    """How many trials of ``study`` are in each state (every state present, zero where none)."""
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


class TrialObjective:
    """The objective of one trial: screen the proposed vector, promote it to more sequences if it is among the
    best, record what was measured; the value returned to Optuna is the screen's (comparable across trials).

    Rung ``r`` covers the pool's first ``r + 1`` rungs of sequences (:meth:`StudySession.rungs`); a trial
    whose rung-``r`` value ranks among the best ``max(1, n // promote_ratio)`` of the ``n`` trials with a
    rung-``r`` value (itself included) is evaluated on rung ``r + 1`` too: successive halving, decided when
    the trial runs, as asynchronous workers need.

    ``running`` holds the number of the trial being evaluated (None between trials), so the loop can
    re-enqueue it when the worker is interrupted or loses the database. An interrupt, or the study vanishing
    (deleted by another process), leaves the objective as :class:`TrialStopped`, which Optuna does not catch.
    """

    def __init__(
        self,
        session: StudySession,
        study: optuna.Study,
        target: int,
        reporter: Reporter,
        interrupts: Interrupts | None = None,
    ) -> None:
        self.session = session
        self.study = study
        self.target = target
        self.reporter = reporter
        self.interrupts = interrupts or Interrupts()
        self.running: int | None = None
        self.rungs = session.rungs()

    def __call__(self, trial: optuna.Trial) -> float:
        self.running = trial.number
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            raise TrialStopped("interrupted") from None
        except Exception:
            if study_vanished(self.study):
                raise TrialStopped("deleted") from None
            raise

    def _run(self, trial: optuna.Trial) -> float:
        self._yield_if_surplus(trial)
        session = self.session
        goal = self._target(trial)
        vector = suggest_allocation(trial, session.space_for(goal))
        share = self._split(trial)
        plan = attrs.selection_plan(self.study, trial)
        if plan is not None:
            return self._select(trial, plan, share)
        search = session.config.search
        screen = self._evaluate(trial.number, vector, self.rungs[0], share=share)
        kl, nll = list(screen.sequence_kl), list(screen.sequence_nll)
        values = [_mean_value(search.objective, kl, nll)]
        own, sizes, seconds = list(values), [len(nll)], screen.seconds
        for rung in self.rungs[1:]:
            if not self._promoted(len(values) - 1, values[-1], goal):
                break
            more = self._evaluate(trial.number, vector, rung, share=share)
            kl, nll = kl + list(more.sequence_kl), nll + list(more.sequence_nll)
            values.append(_mean_value(search.objective, kl, nll))
            own.append(_mean_value(search.objective, list(more.sequence_kl), list(more.sequence_nll)))
            sizes.append(len(more.sequence_nll))
            seconds += more.seconds
        sparse_model = session.sparse_model_for(share)
        target = sparse_model.site_sparsities(vector)
        attrs.record_measurements(
            trial,
            {
                attrs.KL: screen.kl,
                attrs.PERPLEXITY: screen.perplexity,
                attrs.MEASURED_SPARSITY: screen.measured_sparsity,
                attrs.SITE_SPARSITY_ERROR: float((torch.tensor(screen.site_sparsity) - target).abs().max()),
                attrs.NOMINAL_SPARSITY: sparse_model.model_sparsity(vector),
                attrs.MEAN_NLL: screen.mean_nll,
                attrs.RUNG_VALUES: values,
                attrs.RUNG_OWN_VALUES: own,
                attrs.RUNG_SIZES: sizes,
                attrs.SEQUENCE_KL: kl,
                attrs.SEQUENCE_NLL: nll,
                attrs.TOKENS: len(nll) * session.tokens.seq_len,
                attrs.SECONDS: screen.seconds,
                attrs.FORWARD_SECONDS: seconds,
            },
        )
        if session.config.evaluation.heldout == "best" and self._is_new_best(values[0], goal):
            heldout = self._evaluate(trial.number, vector, None, role="heldout", share=share)
            measured = {attrs.HELDOUT_PERPLEXITY: heldout.perplexity, attrs.HELDOUT_KL: heldout.kl}
            attrs.record_measurements(trial, measured)
        return values[0]

    def _split(self, trial: optuna.Trial) -> float | None:
        """The share of the greedy split the trial runs at (recorded), in a study that searches the split; else None."""
        if self.session.config.sparsity.split != "search":
            return None
        place = attrs.split_place(self.study, trial)
        if place is None:  # not placed by a split-searching sampler (an enqueued trial): the default share
            place = (self.session.config.sparsity.greedy.blend, None)
        attrs.record_split(trial, *place)
        return place[0]

    def _target(self, trial: optuna.Trial) -> float:
        """The trial's target: given by a frontier study's sampler, else the study's only one (recorded)."""
        targets = self.session.config.sparsity.targets
        if len(targets) > 1:
            trial.relative_params  # noqa: B018 - Optuna samples lazily; frontier bo chooses the target there
        recorded = attrs.trial_target(trial)  # type: ignore[arg-type]
        if recorded is None:
            if len(targets) > 1:
                raise RuntimeError(f"Trial {trial.number} of frontier study has no target; its sampler gives one.")
            trial.set_user_attr(attrs.TARGET, targets[0])
            return targets[0]
        return recorded

    def _same_target(self, target: float) -> list[optuna.trial.FrozenTrial]:
        """The COMPLETE trials of ``target`` (values of different targets never compare)."""
        targets = self.session.config.sparsity.targets
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return attrs.trials_at(complete, target, targets)

    def _select(self, trial: optuna.Trial, plan: dict[str, Any], share: float | None) -> float:
        """Run a sampler's staged selection (EvoPress's): every stage draws fresh pool sequences, evaluates the
        surviving candidates on them and keeps the best; the last stage adds the parent (candidate 0). The
        trial evaluated the winner; its value is the winner's on the last stage's sequences."""
        session, objective = self.session, self.session.config.search.objective
        candidates = [np.asarray(c, dtype=np.float64) for c in plan["candidates"]]
        alive = list(range(1, len(candidates))) or [0]
        draws = torch.Generator().manual_seed(session.config.seed * 1_000_003 + trial.number)
        record, tokens, values = [], 0, {0: math.inf}
        for stage, (sequences, survivors) in enumerate(plan["stages"]):
            if stage == len(plan["stages"]) - 1 and 0 not in alive:
                alive.append(0)  # elitism: the parent competes in the last stage, on its fresh sequences
            index = torch.randperm(session.tokens.search.shape[0], generator=draws)[: int(sequences)]
            evaluations = {c: self._evaluate(trial.number, candidates[c], index, share=share) for c in alive}
            values = {c: e.value(objective) for c, e in evaluations.items()}
            tokens += len(alive) * int(index.numel()) * session.tokens.seq_len
            record.append({"candidates": alive, "values": [values[c] for c in alive]})
            alive = sorted(alive, key=lambda c: (values[c], c))[: int(survivors)]
        winner = alive[0]
        seconds = sum(e.seconds for e in evaluations.values())
        attrs.record_vector(trial, candidates[winner], 0.0)
        last = evaluations[winner]
        attrs.record_measurements(
            trial,
            {
                attrs.KL: last.kl,
                attrs.PERPLEXITY: last.perplexity,
                attrs.MEASURED_SPARSITY: last.measured_sparsity,
                attrs.TOKENS: tokens,
                attrs.SECONDS: seconds,
                attrs.FORWARD_SECONDS: seconds,
            },
        )
        trial.set_user_attr(attrs.SELECTION, record)
        return values[winner]

    def _evaluate(
        self, number: int, vector: Any, index: torch.Tensor | None, *, role: str = "search", share: float | None = None
    ) -> Any:
        """``vector`` on the role's sequences ``index`` (all of them: None); every batch is a safe point for
        an interrupt, in the dense reference's pass too when this trial is the one that computes it."""
        check, shown = self.interrupts.check, self.session.progress

        def checked(label: str, total: int) -> Callable[[int], None]:
            advance = shown(label, total) if shown is not None else None

            def step(n: int) -> None:
                if advance is not None:
                    advance(n)
                check()

            return step

        self.session.reference(role, progress=checked)
        advance = self.reporter.trial_started(number, int(index.numel())) if index is not None else lambda _n: None
        done = [0]

        def on_batch(sequences: int, _nll: float) -> bool:
            advance(sequences - done[0])
            done[0] = sequences
            check()
            return False

        return self.session.evaluate(vector, role, index=index, on_batch=on_batch, share=share)

    def _promoted(self, rung: int, value: float, target: float) -> bool:
        """Whether a rung-``rung`` value ranks among the best ``max(1, n // promote_ratio)`` so far at ``target``."""
        others = [values[rung] for t in self._same_target(target) if len(values := attrs.rung_values(t)) > rung]
        better = sum(1 for other in others if other < value)
        return better < max(1, int((len(others) + 1) // self.session.config.search.promote_ratio))

    def _yield_if_surplus(self, trial: optuna.Trial) -> None:
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        earlier = self.study.get_trials(deepcopy=False, states=states)
        if sum(1 for t in earlier if t.number < trial.number) >= self.target:
            attrs.mark_surplus(trial)
            raise optuna.TrialPruned("surplus: the study's last slots were taken by trials with lower numbers")

    def _is_new_best(self, value: float, target: float) -> bool:
        finished = [t.value for t in self._same_target(target)]
        finished = [v for v in finished if v is not None]
        return not finished or value < min(finished)


def _mean_value(objective: str, kl: list[float], nll: list[float]) -> float:
    """The objective over the sequences so far: mean KL, or the perplexity of the mean NLL."""
    if objective == "perplexity":
        return math.exp(sum(nll) / len(nll))
    return sum(kl) / len(kl)


class TrialStopped(BaseException):
    """A trial's objective stopped because the worker was interrupted (``"interrupted"``) or its study was
    deleted (``"deleted"``).

    Optuna catches ``Exception`` and ``KeyboardInterrupt`` from an objective, stores the trial as failed and
    logs the error with its full traceback; this passes through it, leaving the trial RUNNING for the runner
    to re-enqueue (or to leave, when the study is gone).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def study_vanished(study: optuna.Study) -> bool:
    """Whether ``study`` was deleted under this process; False when the database cannot say right now."""
    try:
        rdb_storage(study).get_study_name_from_id(study_id(study))
    except KeyError:
        return True
    except Exception:  # a lost connection: the caller's own error says what happened
        return False
    return False


def _deleted(session: StudySession) -> StorageError:
    name = session.config.name
    return StorageError(f"Study {name!r} was deleted while this process ran it; nothing more is stored.")


def _requeue(study: optuna.Study, number: int) -> None:
    """Fail-and-retry the trial this worker was running when interrupted (same params, as a WAITING trial).

    The trial is read and failed in the storage itself, not through Optuna's trial cache, which the interrupt
    may have caught mid-update; a trial that finished in the meantime is left as it is.
    """
    from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError

    storage = rdb_storage(study)
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id(study), number)
    except KeyError:
        return
    if storage.get_trial(trial_id).state == TrialState.RUNNING:
        with contextlib.suppress(UpdateFinishedTrialError):
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.FAIL:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)


def tokens_spent(study: optuna.Study) -> int:
    """Forward tokens the study's finished trials used (screens and promotions)."""
    return sum(attrs.tokens_used(t) for t in study.get_trials(deepcopy=False))


def budget_spent(session: StudySession, study: optuna.Study) -> bool:
    """Whether the study's token budget (if it has one) leaves no room for another screen.

    Trials running elsewhere are counted at their screen's cost; a promotion may still overshoot the budget
    by its own size, which the bench reports as tokens used.
    """
    search = session.config.search
    if search.budget_tokens is None:
        return False
    screen = search.screen_sequences * session.tokens.seq_len
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return tokens_spent(study) + running * screen >= search.budget_tokens


def repair_stale_trials(study: optuna.Study) -> None:
    """Give orphaned RUNNING trials a heartbeat, then fail (and re-enqueue) every trial whose heartbeat is stale."""
    heartbeat_orphans(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _database_failed(session: StudySession, error: BaseException) -> StorageError:
    reason = redact(first_line(database_error(error) or error))
    return StorageError(
        f"The database {session.database.masked_url} failed ({reason}); what finished is stored, and "
        f"`sparsealloc study resume {session.config.name}` continues once it is fixed."
    )


def _wait_for_database(
    session: StudySession, error: Exception, reporter: Reporter, deadline: float, interrupts: Interrupts
) -> None:
    """Wait until the database answers again; one clear error if it stays away past ``deadline``."""
    from sqlalchemy import text

    while True:
        reporter.status("database connection lost; reconnecting")
        try:
            with session.database.optuna_storage.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return
        except CONNECTION_ERRORS:
            if time.monotonic() >= deadline:
                raise _database_failed(session, error) from error
            interrupts.sleep(2.0)


def run_study(
    session: StudySession,
    *,
    n_trials: int | None = None,
    reporter: Reporter | None = None,
    poll_s: float = 2.0,
    reconnect_s: float = RECONNECT_S,
) -> RunResult:
    """Run trials until the study has ``n_trials`` (default: the config's) COMPLETE trials.

    A lost database connection is waited out for ``reconnect_s`` seconds without a finished trial: the trial
    that was running is re-enqueued once the database is back, and the worker goes on.
    """
    reporter = reporter or SilentReporter()
    study = load_optuna_study(session, make_sampler(session))
    target = target_trials(session, n_trials)
    interrupts = Interrupts()
    objective = TrialObjective(session, study, target, reporter, interrupts)
    evaluated = 0
    lost_since: float | None = None
    with interrupts.installed():
        while True:
            interrupts.check()
            try:
                outcome = _step(study, objective, target, reporter, poll_s)
                if outcome == "done":
                    complete = count_states(study)[TrialState.COMPLETE]
                    break
                if outcome == "complete":
                    evaluated += 1
                lost_since = None if outcome == "complete" else lost_since
            except Exception as error:
                if not is_connection_error(error):
                    if study_vanished(study):
                        raise _deleted(session) from None
                    if database_error(error) is not None:
                        raise _database_failed(session, error) from error
                    raise
                lost_since = lost_since if lost_since is not None else time.monotonic()
                _wait_for_database(session, error, reporter, lost_since + reconnect_s, interrupts)
                if objective.running is not None:
                    _requeue(study, objective.running)  # its result may not have been stored
                    objective.running = None
    return RunResult(complete=complete, target=target, evaluated_here=evaluated)


def _step(study: optuna.Study, objective: TrialObjective, target: int, reporter: Reporter, poll_s: float) -> str:
    """One pass of the loop: ``"done"``, ``"waiting"`` (other workers hold the last slots), or the state of
    the trial this worker ran (``"complete"``, ``"pruned"``...)."""
    repair_stale_trials(study)
    counts = count_states(study)
    complete = counts[TrialState.COMPLETE]
    if complete >= target or budget_spent(objective.session, study):
        return "done"
    running, waiting = counts[TrialState.RUNNING], counts[TrialState.WAITING]
    if complete + running >= target and waiting == 0:
        reporter.status(f"{complete}/{target} complete; waiting for {running} running trial(s) elsewhere")
        objective.interrupts.sleep(poll_s)
        return "waiting"
    objective.running = None
    try:
        study.optimize(objective, n_trials=1)
    except TrialStopped as stopped:
        if stopped.reason == "deleted":
            raise _deleted(objective.session) from None
        if objective.running is not None:
            _requeue(study, objective.running)
        raise KeyboardInterrupt from None
    number = objective.running
    if number is None:
        return "none"
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    reporter.trial_finished(frozen, count_states(study)[TrialState.COMPLETE], target)
    objective.running = None
    return frozen.state.name.lower()
