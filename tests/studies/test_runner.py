from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from allocator import build_greedy_table, teal_step
from allocator.search import trial_attributes as attrs
from allocator.search.trial_attributes import evaluated_vector
from storage import Database, StorageError
from studies import create_study, load_config, open_session, run_study, summarize


def _complete(database: Database, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=database.url)
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE]


def test_run_then_resume_reaches_the_target_without_reevaluating(storage_url, write_config):
    config, _ = load_config(write_config(trials=5))
    database = Database(storage_url)
    assert create_study(database, config) is True
    messages: list[str] = []
    session = open_session(database, config, notify=messages.append)
    assert any(m.startswith("Computed calibration") for m in messages)
    first = run_study(session, n_trials=3)
    assert (first.complete, first.evaluated_here) == (3, 3)
    before = {t.number: t.value for t in _complete(database, "tiny")}

    messages.clear()
    again = open_session(Database(storage_url), config, notify=messages.append)  # a new process would do this
    assert any(m.startswith("Reused the stored calibration") for m in messages)
    second = run_study(again)
    assert (second.complete, second.evaluated_here) == (5, 2)
    trials = _complete(database, "tiny")
    assert {t.number: t.value for t in trials if t.number in before} == before
    vectors = np.array([evaluated_vector(t) for t in trials])
    assert len({tuple(v) for v in vectors}) == 5
    assert np.allclose(vectors @ session.space.weight_array(), session.space.rhs, rtol=1e-9)
    assert (
        attrs.HELDOUT_PERPLEXITY in min(trials, key=lambda t: t.value).user_attrs
    )  # the best was checked on held-out data


def test_optuna_reads_our_database(sqlite_url, write_config):
    config, _ = load_config(write_config(trials=2))
    database = Database(sqlite_url)
    create_study(database, config)
    run_study(open_session(database, config))
    loaded = optuna.load_study(study_name="tiny", storage=sqlite_url)  # what optuna-dashboard does
    assert len(loaded.trials) == 2 and loaded.best_trial.user_attrs["vector"]
    assert loaded.metric_names == ["kl"]


def test_single_point_samplers_run_one_trial(sqlite_url, write_config):
    config, _ = load_config(write_config(name="greedy", sampler={"name": "greedy"}, sparsity={"split": "greedy"}))
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    result = run_study(session)
    assert (result.complete, result.target) == (1, 1)
    (trial,) = _complete(database, "greedy")
    assert evaluated_vector(trial) == pytest.approx([0.5] * 3)
    summary = summarize(database, "greedy")
    assert summary.split == "greedy" and summary.best_value == trial.value == summary.best_kl


def test_blend_split_mixes_the_stored_greedy_tables_and_meets_the_target(sqlite_url, write_config):
    database = Database(sqlite_url)
    greedy, _ = load_config(write_config(name="greedy", sampler={"name": "greedy"}, sparsity={"split": "greedy"}))
    blend, _ = load_config(
        write_config(name="blend", sampler={"name": "uniform"}, sparsity={"split": "blend", "greedy": {"blend": 0.25}})
    )
    create_study(database, greedy)
    create_study(database, blend)
    greedy_session = open_session(database, greedy)
    messages: list[str] = []
    blend_session = open_session(database, blend, notify=messages.append)
    assert any(m.startswith("Reused the stored greedy split tables") for m in messages)
    greedy_sites = greedy_session.sparse_model.site_sparsities(0.5)
    blend_sites = blend_session.sparse_model.site_sparsities(0.5)
    assert not np.allclose(greedy_sites.numpy(), 0.5)
    assert np.allclose(blend_sites.numpy(), 0.75 * 0.5 + 0.25 * greedy_sites.numpy(), atol=1e-12)
    run_study(blend_session)
    (trial,) = _complete(database, "blend")
    assert attrs.measured_sparsity(trial) == pytest.approx(0.5, abs=5e-3)
    assert summarize(database, "blend").split == "blend"


def test_a_study_stored_before_a_setting_existed_is_still_the_same_study(sqlite_url, write_config):
    """Upgrading adds settings with defaults; a study an older version stored without them resumes."""
    config, _ = load_config(write_config(trials=2))
    database = Database(sqlite_url)
    assert create_study(database, config) is True
    older = config.canonical()
    del older["sparsity"]["greedy"]["blend"]  # what a version without the blend split stored
    with database.engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("UPDATE sparsealloc_studies SET config = :config, config_hash = :hash WHERE name = :name"),
            {"config": json.dumps(older, sort_keys=True), "hash": "0" * 64, "name": config.name},
        )
    assert create_study(database, config) is False
    changed, _ = load_config(write_config(trials=2, sparsity={"greedy": {"blend": 0.25}}))
    with pytest.raises(StorageError, match="already exists with a different configuration"):
        create_study(database, changed)


def test_the_teal_greedy_protocol_builds_teals_path_and_is_stored_apart(sqlite_url, write_config):
    """``greedy.protocol: teal``: TEAL's step rule and last-quarter L2 error, a table of its own in storage."""
    database = Database(sqlite_url)
    greedy = {"sequences": 2}
    default, _ = load_config(
        write_config(name="d", sampler={"name": "greedy"}, sparsity={"split": "greedy", "greedy": greedy})
    )
    teal, _ = load_config(
        write_config(
            name="t", sampler={"name": "greedy"}, sparsity={"split": "greedy", "greedy": {**greedy, "protocol": "teal"}}
        )
    )
    for config in (default, teal):
        create_study(database, config)
    default_session = open_session(database, default)
    messages: list[str] = []
    teal_session = open_session(database, teal, notify=messages.append)
    assert not any(m.startswith("Reused the stored greedy split tables") for m in messages)
    adapter = teal_session.loaded.adapter
    expected = build_greedy_table(
        adapter,
        teal_session.calibration,
        teal_session.tokens.calibration[:2],
        step=teal_step(adapter.site_weights()[0]),
        max_sparsity=0.9,
        error_positions=0.25,
        error_norm="l2",
    )
    sites = teal_session.greedy.site_sparsities(torch.full((adapter.n_blocks,), 0.5, dtype=torch.float64))
    assert torch.allclose(sites, expected.site_sparsities(torch.full((adapter.n_blocks,), 0.5, dtype=torch.float64)))
    assert teal_session.greedy.settings["step"] == pytest.approx(teal_step(adapter.site_weights()[0]))
    assert not torch.allclose(sites, default_session.greedy.site_sparsities(torch.full_like(sites[:, 0], 0.5)))
