"""The search protocol: screens common to every trial, promotions to fresh sequences, a token budget, EvoPress's
staged selection; kept straight across runs, resumes and workers."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from allocator.search import trial_attributes as attrs
from storage import Database
from studies import create_study, load_config, open_session, run_study, tokens_spent

SEQ_LEN = 32  # tests/studies/conftest.py
SCREEN, PROMOTE = 6, 4


def _complete(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    return sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)


def check_bookkeeping(trials: list[optuna.trial.FrozenTrial]) -> None:
    """Every trial screened once, promoted at most once, and promoted only when it ranked in the best third of
    the screens finished before it (``max(1, n // 3)`` of ``n`` screens, itself included)."""
    for trial in trials:
        sizes = attrs.rung_sizes(trial)
        assert sizes in ([SCREEN], [SCREEN, PROMOTE]), sizes  # nothing promoted twice, or half-way
        assert len(attrs.sequence_values(trial)) == sum(sizes) == len(attrs.sequence_values(trial, attrs.SEQUENCE_NLL))
        assert attrs.tokens_used(trial) == sum(sizes) * SEQ_LEN
        assert trial.value == pytest.approx(attrs.rung_values(trial)[0])
        assert trial.value == pytest.approx(np.mean(attrs.sequence_values(trial)[:SCREEN]))


def test_screens_are_common_and_the_best_are_promoted_to_fresh_sequences(sqlite_url, write_config):
    config, _ = load_config(write_config(trials=8))
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    run_study(session)
    trials = _complete(sqlite_url)
    check_bookkeeping(trials)
    promoted = [t for t in trials if len(attrs.rung_sizes(t)) == 2]
    assert trials[0] in promoted  # the first screen is the best so far
    for trial in trials:  # sequential: the rule can be replayed exactly
        earlier = [t.value for t in trials if t.number < trial.number]
        better = sum(v < trial.value for v in earlier)
        assert (trial in promoted) == (better < max(1, (len(earlier) + 1) // 3)), trial.number
    # Every trial measured at exactly its target sparsity on the screen.
    assert all(abs(attrs.measured_sparsity(t) - 0.5) < 0.005 for t in trials)
    assert all(attrs.kl(t) == pytest.approx(t.value) for t in trials)


def test_the_budget_stops_the_study_and_a_resume_spends_nothing_more(sqlite_url, write_config):
    budget = 10 * SCREEN * SEQ_LEN
    config, _ = load_config(write_config(trials=100, search={"budget_tokens": budget}))
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    result = run_study(session)
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    spent = tokens_spent(study)
    assert budget <= spent < budget + (SCREEN + PROMOTE) * SEQ_LEN
    assert result.complete < 10 and result.complete == len(_complete(sqlite_url))  # promotions took their share
    again = run_study(open_session(Database(sqlite_url), config))
    assert again.evaluated_here == 0 and tokens_spent(study) == spent


def test_evopress_runs_one_generation_per_trial_with_fresh_draws(sqlite_url, write_config):
    stages = [[1, 2], [2, 1]]
    config, _ = load_config(
        write_config(name="evo", trials=3, sampler={"name": "evopress", "options": {"offspring": 3, "stages": stages}})
    )
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    run_study(session)
    trials = _complete(sqlite_url, "evo")
    assert len(trials) == 3
    parent = session.space.uniform_vector()
    for trial in trials:
        plan = trial.system_attrs[attrs.SELECTION_PLAN]
        record = trial.user_attrs[attrs.SELECTION]
        assert np.allclose(plan["candidates"][0], parent)  # each generation starts from the last winner
        assert record[0]["candidates"] == [1, 2, 3]  # stage 1: the offspring
        assert 0 in record[1]["candidates"] and len(record[1]["candidates"]) == 3  # stage 2: survivors + parent
        assert attrs.tokens_used(trial) == (3 * 1 + 3 * 2) * SEQ_LEN
        winner = np.asarray(attrs.evaluated_vector(trial))
        assert any(np.allclose(winner, c) for c in plan["candidates"])
        assert session.space.contains(winner)
        parent = winner
