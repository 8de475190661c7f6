"""A study that searches the site split (``sparsity.split: search``): no-search start points first, the search at
the best one's share, and an export that is never worse on validation than the allocations needing no search."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from allocator import evaluate_tokens, load_lookup, load_model
from allocator.search import trial_attributes as attrs
from allocator.search.samplers import next_probe
from storage import Database
from studies import (
    candidate_trials,
    create_study,
    evaluate_candidate,
    export_study,
    load_config,
    load_optuna_study,
    open_session,
    run_study,
    summarize,
)
from studies.cli import cli

SHARES = [0.0, 0.5, 1.0]


@pytest.fixture
def searched(sqlite_url, write_config, tmp_path):
    """A split-searching random study of 6 trials on the tiny model, run and exported."""
    config, _ = load_config(
        write_config(
            name="searched",
            trials=6,
            sparsity={"split": "search", "greedy": {"start_shares": SHARES, "share_probes": 0}},
        )
    )
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    run_study(session)
    return session, export_study(session, tmp_path / "export"), tmp_path / "export"


def _complete(session):
    study = load_optuna_study(session)
    return sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.number)


def test_the_first_trials_are_the_no_search_allocations_then_the_search_runs_at_the_best_share(searched):
    session, _, _ = searched
    trials = _complete(session)
    starts, searched_trials = trials[:3], trials[3:]
    assert [attrs.trial_split(t) for t in starts] == SHARES
    assert [attrs.no_search_name(t) for t in starts] == ["uniform", "blend-uniform", "greedy-uniform"]
    for trial in starts:  # the uniform vector: every block at the target
        assert attrs.evaluated_vector(trial) == pytest.approx([0.5] * session.space.dim)
    best_start = min(starts, key=lambda t: (t.value, t.number))
    assert all(attrs.trial_split(t) == attrs.trial_split(best_start) for t in searched_trials)
    assert all(attrs.no_search_name(t) is None for t in searched_trials)
    assert len({tuple(attrs.evaluated_vector(t)) for t in searched_trials}) == len(searched_trials)
    for trial in trials:  # the forward passes' time: the screen's, plus every promotion's
        promoted = len(attrs.rung_values(trial)) > 1
        assert attrs.forward_seconds(trial) >= attrs.evaluation_seconds(trial) > 0
        assert (attrs.forward_seconds(trial) > attrs.evaluation_seconds(trial)) == promoted


def test_each_share_is_the_split_the_trial_measured(searched):
    session, _, _ = searched
    for trial in _complete(session)[:3]:
        share = attrs.trial_split(trial)
        sites = session.sparse_model_for(share).site_sparsities(attrs.evaluated_vector(trial))
        uniform = torch.full_like(sites, 0.5, dtype=torch.float64)
        assert torch.equal(sites, uniform) == (share == 0.0)  # only share 0 is the uniform split
        assert trial.user_attrs[attrs.SITE_SPARSITY_ERROR] < 0.01  # the sites ran at the share's split
        assert trial.user_attrs[attrs.MEASURED_SPARSITY] == pytest.approx(0.5, abs=0.005)


def test_the_export_compares_the_no_search_allocations_and_records_the_best(searched):
    session, result, out = searched
    study = load_optuna_study(session)
    candidates = [evaluate_candidate(session, t) for t in candidate_trials(session, study)]
    named = {c.no_search for c in candidates if c.no_search is not None}
    assert named == {"uniform", "blend-uniform", "greedy-uniform"}
    assert result.candidates == len(candidates)
    best = min(candidates, key=lambda c: (c.validation.kl, c.trial.number))
    assert result.trial_number == best.trial.number and result.share == best.share
    assert result.validation.kl <= min(c.validation.kl for c in candidates if c.no_search is not None)
    yardstick = min((c for c in candidates if c.no_search), key=lambda c: (c.validation.kl, c.trial.number))
    assert result.no_search.trial.number == yardstick.trial.number
    lookup = json.loads((out / "lookup.json").read_text())
    assert lookup["study"]["split_share"] == best.share
    assert lookup["study"]["best_no_search"]["name"] == yardstick.no_search
    names = list(lookup["blocks"][0]["sites"])
    sites = torch.tensor([[block["sites"][n]["sparsity"] for n in names] for block in lookup["blocks"]])
    expected = session.sparse_model_for(best.share).site_sparsities(best.vector)
    assert torch.allclose(sites.double(), expected) and lookup["split"] == "search"
    fresh = load_model(session.config.model.source)
    with load_lookup(fresh.model, out) as sparsifiers:  # an inference loader reads it as any lookup
        evaluate_tokens(fresh.adapter, session.tokens.heldout, measured_sparsity=sparsifiers.measured_model_sparsity)
        assert sparsifiers.measured_model_sparsity() == pytest.approx(result.heldout.thresholds.measured_sparsity)


def test_status_shows_the_best_no_search_allocation_and_the_searchs_gain(searched, sqlite_url):
    session, _, _ = searched
    summary = summarize(Database(sqlite_url), "searched")
    starts = _complete(session)[:3]
    best_start = min(starts, key=lambda t: (t.value, t.number))
    assert summary.no_search.trial == best_start.number and summary.no_search.value == best_start.value
    assert summary.search_gain == pytest.approx(1 - summary.best_value / best_start.value)
    shown = CliRunner().invoke(cli, ["study", "status", "searched", "--storage", sqlite_url])
    assert shown.exit_code == 0, shown.output
    assert f"{attrs.no_search_name(best_start)} (trial {best_start.number})" in shown.output
    assert "lower on the same sequences" in shown.output


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sampler": {"name": "tpe"}}, "sampler `tpe` cannot search the site split"),
        ({"sampler": {"name": "uniform"}}, "sampler `uniform` cannot search the site split"),
        ({"sparsity": {"split": "search", "target": [0.4, 0.5]}}, "leaves no trial for the search after the 6 start"),
        ({"trials": 3}, "leaves no trial for the search after the 3 start points and 3 share probes"),
        ({"sparsity": {"split": "search", "greedy": {"start_shares": [0.5, 0.5]}}}, "a start share is given twice"),
        ({"sparsity": {"split": "search", "greedy": {"start_shares": [1.5]}}}, "start_shares.0"),
    ],
)
def test_a_split_search_it_cannot_run_is_refused_in_one_sentence(write_config, overrides, message):
    base = {"sparsity": {"split": "search"}, "trials": 10}
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(Exception, match=message.replace("`", ".").replace("(", ".").replace(")", ".")):
        load_config(write_config(**base))


def test_the_demo_measures_every_no_search_allocation_beside_the_export(trained_tiny_dir, tmp_path):
    from studies import build_config, run_demo

    config = build_config(
        "demo-tiny",
        target=0.5,
        model=str(trained_tiny_dir),
        data={"seq_len": 32, "calibration_sequences": 6, "search_sequences": 10, "validation_sequences": 3},
        sparsity={"split": "search", "greedy": {"sequences": 1, "step": 0.05, "share_probes": 0}},
        sampler="random",
        search={"screen_sequences": 6, "promote_sequences": [4]},
        trials=5,
        evaluation={"batch_size": 3},
    )
    result = run_demo(tmp_path / "demo", config=config)
    labels = [label for label, _ in result.rows()]
    assert labels[:3] == ["uniform", "blend-uniform", "greedy-uniform"] and labels[3].startswith("bo (trial ")
    assert result.best_no_search == result.exported.no_search.no_search
    dense, best = result.dense.perplexity, result.baselines[result.best_no_search].exact.perplexity
    assert result.gain(result.best_no_search) == pytest.approx(
        (best - result.exported.heldout.exact.perplexity) / (best - dense)
    )
    for measured in result.baselines.values():
        assert measured.exact.measured_sparsity == pytest.approx(0.5, abs=0.01)


def test_a_frontier_searches_the_split_at_each_target_on_its_own(sqlite_url, write_config, tmp_path):
    targets = [0.4, 0.6]
    config, _ = load_config(
        write_config(
            name="frontier-search",
            trials=10,
            sampler={"name": "bo"},
            sparsity={"split": "search", "target": targets, "greedy": {"share_probes": 1}},
        )
    )
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    run_study(session)
    trials = _complete(session)
    for target in targets:
        mine = [t for t in trials if attrs.trial_target(t) == target]
        starts = [t for t in mine if attrs.no_search_name(t) is not None]
        assert sorted(attrs.trial_split(t) for t in starts) == SHARES  # every target has its own start points
        probes = [t for t in mine if attrs.is_share_probe(t)]
        assert len(probes) == 1  # and its own share probe
        best = min(starts + probes, key=lambda t: (t.value, t.number))
        searched_trials = [t for t in mine if attrs.no_search_name(t) is None and not attrs.is_share_probe(t)]
        assert searched_trials and all(attrs.trial_split(t) == attrs.trial_split(best) for t in searched_trials)
    result = export_study(session, tmp_path / "frontier")
    for point in result.points:
        assert point.no_search is not None and point.validation.kl <= point.no_search.validation.kl


def test_share_probes_bisect_toward_the_best_share_and_the_search_runs_at_the_best_uniform_vector(
    sqlite_url, write_config
):
    config, _ = load_config(
        write_config(
            name="probed",
            trials=7,
            sparsity={"split": "search", "greedy": {"start_shares": SHARES, "share_probes": 2}},
        )
    )
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    run_study(session)
    trials = _complete(session)
    starts, probes, searched_trials = trials[:3], trials[3:5], trials[5:]
    assert [attrs.no_search_name(t) for t in starts] == ["uniform", "blend-uniform", "greedy-uniform"]
    assert all(attrs.is_share_probe(t) and attrs.no_search_name(t) is None for t in probes)
    tried = [(attrs.trial_split(t), t.value) for t in starts]
    for probe in probes:  # each probe is the line search's next share given the values before it
        best_share = min(tried, key=lambda p: p[1])[0]
        assert attrs.trial_split(probe) == next_probe(best_share, tried)
        assert attrs.evaluated_vector(probe) == pytest.approx([0.5] * session.space.dim)
        tried.append((attrs.trial_split(probe), probe.value))
    best_uniform = min(starts + probes, key=lambda t: (t.value, t.number))
    assert searched_trials and all(attrs.trial_split(t) == attrs.trial_split(best_uniform) for t in searched_trials)
    assert not any(attrs.is_share_probe(t) or attrs.is_uniform(attrs.evaluated_vector(t)) for t in searched_trials)


@pytest.mark.parametrize(
    ("best", "tried", "expected"),
    [
        (0.5, [(0.0, 2.0), (0.5, 1.0), (1.0, 1.5)], 0.75),  # equal intervals: toward the better neighbour
        (0.5, [(0.0, 1.2), (0.5, 1.0), (1.0, 1.5)], 0.25),
        (0.5, [(0.0, 2.0), (0.5, 1.0), (0.75, 1.1), (1.0, 1.5)], 0.25),  # the wider interval first
        (1.0, [(0.0, 3.0), (0.5, 2.0), (1.0, 1.0)], 0.75),
        (0.5, [(0.5, 1.0)], 0.75),  # no neighbour: the ends of [0, 1] bound the interval
        (0.5, [(0.49, 2.0), (0.5, 1.0), (0.51, 2.0)], None),  # resolved finer than 1/64
    ],
)
def test_the_next_share_probe_bisects_the_wider_interval_next_to_the_best_share(best, tried, expected):
    assert next_probe(best, tried) == expected
