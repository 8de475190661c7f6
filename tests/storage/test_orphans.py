"""Orphaned trials (RUNNING, never heartbeaten) are given a heartbeat, then failed like any stale trial."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from allocator.search import rdb_storage
from storage import Database, heartbeat_orphans, unheartbeated_running_trials
from studies import repair_stale_trials


def test_an_orphan_is_stamped_once_then_failed_after_the_grace_period(storage_url):
    database = Database(storage_url, heartbeat_grace_s=1)
    study = optuna.create_study(study_name="s", storage=database.optuna_storage)
    orphan_id = database.optuna_storage.create_new_trial(study._study_id)  # what a worker killed after ask() leaves
    storage = rdb_storage(study)
    assert unheartbeated_running_trials(storage, study._study_id) == [orphan_id]
    assert heartbeat_orphans(study) == [orphan_id]
    assert unheartbeated_running_trials(storage, study._study_id) == []
    assert heartbeat_orphans(study) == []  # stamped once
    deadline = time.monotonic() + 60
    while study.trials[0].state == TrialState.RUNNING and time.monotonic() < deadline:
        repair_stale_trials(study)  # its heartbeat is now 1 s stale on the database clock
        time.sleep(0.2)
    assert study.trials[0].state == TrialState.FAIL
    retry = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].system_attrs["failed_trial"] == 0


def test_a_live_trial_keeps_running(storage_url):
    database = Database(storage_url, heartbeat_grace_s=20)
    study = optuna.create_study(study_name="s", storage=database.optuna_storage)
    trial = study.ask()
    database.optuna_storage.record_heartbeat(trial._trial_id)
    assert heartbeat_orphans(study) == []
    repair_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING
