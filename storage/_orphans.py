"""Orphaned trials: RUNNING trials that never got a heartbeat, which Optuna alone would keep forever; and
which RUNNING trials are alive (a fresh heartbeat), which ``study delete`` will not remove without ``--force``.

Optuna fails a RUNNING trial once its heartbeat is older than the grace period, but only if it has a
heartbeat row. A worker killed between creating its trial (``study.ask()``) and its first heartbeat
leaves a RUNNING trial with no row, and every worker would wait for it forever. The repair reuses
Optuna's own mechanism: whoever finds such a trial records a heartbeat for it. The row is stamped by the
database clock, so a live owner (whose heartbeat thread is about to start) simply overwrites it, and a dead
one's trial goes stale after the grace period and is failed and re-enqueued like any other stale trial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from allocator.search import rdb_storage, stale_trial_ids, study_id, trial_tables

if TYPE_CHECKING:
    import optuna


def unheartbeated_running_trials(storage: optuna.storages.RDBStorage, study_id: int) -> list[int]:
    """The ids of the study's RUNNING trials that have no heartbeat row."""
    from optuna.trial import TrialState

    trials, heartbeats = trial_tables()
    query = (
        select(trials.trial_id)
        .outerjoin(heartbeats, heartbeats.trial_id == trials.trial_id)
        .where(trials.study_id == study_id, trials.state == TrialState.RUNNING, heartbeats.trial_id.is_(None))
    )
    with Session(storage.engine) as session:
        return list(session.scalars(query))


def live_running_trials(storage: optuna.storages.RDBStorage, study_id: int) -> list[int]:
    """The numbers of the study's RUNNING trials whose heartbeat is fresh: a process is evaluating them now.

    Fresh means not stale by the storage's own test (heartbeat within its grace period, database clock), so
    this agrees with the trials Optuna would fail. A RUNNING trial without a heartbeat counts as not alive:
    a live owner writes its first heartbeat within moments of creating the trial.
    """
    from optuna.trial import TrialState

    trials, heartbeats = trial_tables()
    query = (
        select(trials.trial_id, trials.number)
        .join(heartbeats, heartbeats.trial_id == trials.trial_id)
        .where(trials.study_id == study_id, trials.state == TrialState.RUNNING)
    )
    with Session(storage.engine) as session:
        running = {trial_id: number for trial_id, number in session.execute(query)}
    stale = set(stale_trial_ids(storage, study_id))  # Optuna's own staleness test
    return sorted(number for trial_id, number in running.items() if trial_id not in stale)


def heartbeat_orphans(study: optuna.Study) -> list[int]:
    """Record a first heartbeat (database clock) for every RUNNING trial of ``study`` that has none.

    Returns the trial ids stamped. Optuna's ``fail_stale_trials`` then fails those whose owner never beats
    again, after the storage's grace period.
    """
    storage = rdb_storage(study)
    ids = unheartbeated_running_trials(storage, study_id(study))
    for trial_id in ids:
        storage.record_heartbeat(trial_id)  # a concurrent first heartbeat of the owner wins; both are fine
    return ids
