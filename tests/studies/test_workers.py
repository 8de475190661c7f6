"""Processes on one study: a SIGKILL mid-trial then resume, and several workers sharing a study."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from allocator.search.trial_attributes import evaluated_vector


def _trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _assert_no_duplicates(trials: list[optuna.trial.FrozenTrial]) -> None:
    vectors = [tuple(np.round(evaluated_vector(t), 12)) for t in trials if t.state == TrialState.COMPLETE]
    assert len(vectors) == len(set(vectors)), "a proposal was evaluated twice"


def _assert_on_their_targets(complete: list[optuna.trial.FrozenTrial], targets: list[float]) -> None:
    """Every trial meets its recorded target (the tiny model's blocks weigh the same: the mean is the sparsity),
    and the targets took turns."""
    counts = dict.fromkeys(targets, 0)
    for trial in complete:
        counts[trial.user_attrs["target"]] += 1
        assert abs(float(np.mean(evaluated_vector(trial))) - trial.user_attrs["target"]) < 1e-9
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def _kill_inside_a_trial(process: subprocess.Popen, url: str, after: int) -> optuna.trial.FrozenTrial | None:
    """SIGKILL ``process`` while it evaluates a trial, once ``after`` trials are complete.

    Each look at the study happens with the process frozen (SIGSTOP), so the trial seen running is still
    running when the kill lands, however fast the machine finishes trials. One storage object serves every
    look, so a look costs milliseconds and the process still runs most of the time. Returns the killed trial."""
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name("tiny")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        os.kill(process.pid, signal.SIGSTOP)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING and "vector" in t.user_attrs]
        if done >= after and running:
            os.kill(process.pid, signal.SIGKILL)
            storage.engine.dispose()
            return running[0]
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.01)
    storage.engine.dispose()
    return None


@pytest.mark.parametrize("target", [0.5, [0.3, 0.6]], ids=["one-target", "frontier"])
def test_sigkill_mid_trial_then_resume_loses_and_repeats_nothing(storage_url, write_config, processes, target):
    path = write_config(trials=6, data={"seq_len": 64, "calibration_sequences": 48}, sparsity={"target": target})
    processes.run("study", "create", str(path), "--storage", storage_url)
    run = processes.start("study", "run", "tiny", "--storage", storage_url)
    victim = _kill_inside_a_trial(run, storage_url, after=2)
    assert victim is not None, run.communicate()[0]
    run.wait()
    finished_before = {t.number: t.value for t in _trials(storage_url) if t.state == TrialState.COMPLETE}

    processes.run("study", "resume", "tiny", "--storage", storage_url)
    trials = _trials(storage_url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    assert {t.number: t.value for t in complete if t.number in finished_before} == finished_before
    (killed,) = [t for t in trials if t.number == victim.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].user_attrs["vector"] == victim.user_attrs["vector"]
    assert retries[0].user_attrs["target"] == victim.user_attrs["target"]  # a frontier trial keeps its target
    _assert_no_duplicates(trials)
    _assert_on_their_targets(complete, target if isinstance(target, list) else [target])


@pytest.mark.parametrize(
    ("backend", "workers", "sampler"),
    [("sqlite", 2, "random"), pytest.param("postgres", 3, "bo", marks=pytest.mark.postgres)],
)
def test_workers_complete_one_study_without_duplicates(request, backend, workers, sampler, write_config, processes):
    url = request.getfixturevalue(f"{backend}_url")
    path = write_config(trials=10, sampler={"name": sampler})
    processes.run("study", "create", str(path), "--storage", url)
    started = [processes.start("worker", "tiny", "--storage", url) for _ in range(workers)]
    outputs = [processes.finish(process) for process in started]
    trials = _trials(url)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 10, outputs
    assert not [t for t in trials if t.state == TrialState.FAIL]
    _assert_no_duplicates(trials)
    calibrated = sum("Computed calibration (" in output for output in outputs)
    assert calibrated == 1, outputs  # the first worker calibrates, the others reuse it


@pytest.mark.postgres
def test_workers_share_a_frontier_study(postgres_url, write_config, processes):
    options = {"n_initial": 3, "num_restarts": 2, "raw_samples": 32, "mc_samples": 16}
    path = write_config(trials=9, sparsity={"target": [0.3, 0.5, 0.7]}, sampler={"name": "bo", "options": options})
    processes.run("study", "create", str(path), "--storage", postgres_url)
    started = [processes.start("worker", "tiny", "--storage", postgres_url) for _ in range(2)]
    outputs = [processes.finish(process) for process in started]
    trials = _trials(postgres_url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 9, outputs
    assert not [t for t in trials if t.state == TrialState.FAIL]
    _assert_no_duplicates(trials)
    for trial in complete:
        assert abs(float(np.mean(evaluated_vector(trial))) - trial.user_attrs["target"]) < 1e-9
    assert {t.user_attrs["target"] for t in complete} == {0.3, 0.5, 0.7}
