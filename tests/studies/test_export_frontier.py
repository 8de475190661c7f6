"""Exporting, applying and reporting a frontier study (several targets) on the tiny trained Llama.

The trials are stored through Optuna's API (each a vector on its target's constraint, with its target,
rung values and held-out figures), so the export is tested apart from how the runner produces them.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

from allocator import SITE_NAMES, frontier_point, load_model, read_frontier, read_lookup
from storage import Database
from studies import create_study, export_study, load_config, open_session, run_study, write_report
from studies.cli import cli

from .conftest import tiny_config

TARGETS = [0.4, 0.5, 0.6]
# Per target: (offset of block 0 from the target, search value); blocks 1 and 2 share -offset/2 each.
TRIALS = [(0.0, 0.9), (0.1, 0.5), (-0.1, 0.7)]


def _run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def _add_trials(database: Database, name: str) -> None:
    study = optuna.load_study(study_name=name, storage=database.optuna_storage)
    for target in TARGETS:
        for offset, value in TRIALS:
            vector = [target + offset, target - offset / 2, target - offset / 2]
            study.add_trial(
                optuna.trial.create_trial(
                    value=value + target,  # values of different targets are not comparable; never mixed
                    user_attrs={
                        "vector": vector,
                        "target": target,
                        "rung_values": [value + target],
                        "measured_sparsity": target,
                        "heldout_perplexity": 10 + 20 * target + value,
                        "heldout_kl": target + value / 10,
                    },
                )
            )


@pytest.fixture(scope="module")
def frontier_study(tmp_path_factory, trained_tiny_dir):
    root = tmp_path_factory.mktemp("frontier")
    url = f"sqlite:///{root / 'study.db'}"
    overrides = {"name": "front", "sparsity": {"target": TARGETS}, "search": {"validation_candidates": 2}}
    path = root / "front.yaml"
    path.write_text(yaml.safe_dump(tiny_config(trained_tiny_dir, **overrides)))
    config, _ = load_config(path)
    database = Database(url, create=True)
    create_study(database, config)
    _add_trials(database, "front")
    result = _run("study", "export", "front", "--out", root / "lookup", "--storage", url)
    assert result.exit_code == 0, result.output
    return {"url": url, "root": root, "lookup": root / "lookup", "output": result.stdout, "database": database}


def test_export_writes_one_complete_lookup_per_target_and_an_index(frontier_study, trained_tiny_dir):
    out = frontier_study["lookup"]
    index = read_frontier(out)
    assert index["format"] == "sparsealloc.frontier/v1"
    assert [p["target"] for p in index["points"]] == TARGETS
    assert index["model"]["fingerprint"] == load_model(trained_tiny_dir).fingerprint
    for entry in index["points"]:
        point = out / entry["directory"]
        lookup = read_lookup(point)
        assert lookup["target_sparsity"] == entry["target"]
        assert abs(lookup["achieved_sparsity"] - entry["target"]) < 1e-9
        assert lookup["study"]["trial"] == entry["trial"]
        # The chosen trial is one of this target's own two most promising, never another target's.
        own = {t.number for t in optuna.load_study(study_name="front", storage=frontier_study["url"]).trials}
        assert entry["trial"] in own and entry["trial"] // 3 == TARGETS.index(entry["target"])
        assert len(lookup["quantile_levels"]) == len(lookup["blocks"][0]["sites"]["q"]["quantiles"])
        assert {"validation", "heldout"} <= set(entry)
        for name in ("nncf.json", "block_sparsities.json", "histograms", "lookup"):
            assert (point / name).exists(), name
    assert (out / "histograms").is_dir() and (out / "lookup" / "layer-0" / "results.csv").is_file()
    lines = [line for line in frontier_study["output"].splitlines() if line.startswith("target ")]
    assert len(lines) == len(TARGETS) and all("held-out KL" in line for line in lines)


def test_the_database_records_one_export_the_middle_point(frontier_study):
    index = read_frontier(frontier_study["lookup"])
    with sqlite3.connect(frontier_study["root"] / "study.db") as connection:
        rows = connection.execute(
            "SELECT trial_number, heldout_perplexity, lookup FROM sparsealloc_exports WHERE study_name = 'front'"
        ).fetchall()
    middle = index["points"][1]
    assert index["study"]["recorded_point"] == "target-0.50" == middle["directory"]
    assert len(rows) == 1
    trial, heldout, lookup = rows[0]
    assert trial == middle["trial"]
    assert heldout == pytest.approx(middle["heldout"]["with_thresholds"]["perplexity"])
    assert json.loads(lookup)["format"] == "sparsealloc.frontier/v1"


def test_apply_interpolates_between_targets(frontier_study, trained_tiny_dir):
    out = frontier_study["lookup"]
    small = ["--sequences", "2", "--seq-len", "32", "--batch-size", "2"]
    result = _run("apply", "--lookup", out, "--model", trained_tiny_dir, "--sparsity", "0.55", *small)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("sparsity"))
    assert "target 0.5500 (interpolated between the frontier's points at 0.5 and 0.6)" in line
    measured = float(line.rsplit("measured ", 1)[1])
    assert 0.5 < measured < 0.6  # thresholds calibrated on other text: near, not exactly at, 0.55
    lookup = frontier_point(out, 0.55)
    loaded = load_model(trained_tiny_dir)
    weights = loaded.adapter.site_weights().to(torch.float64)
    rows = [[block["sites"][name]["sparsity"] for name in SITE_NAMES] for block in lookup["blocks"]]
    sites = torch.tensor(rows, dtype=torch.float64)
    assert abs(float((sites * weights).sum() / weights.sum()) - 0.55) <= 1e-9


@pytest.mark.parametrize(("sparsity", "fragment"), [("0.75", "outside the frontier"), (None, "give a sparsity")])
def test_apply_with_a_bad_sparsity_is_one_sentence(frontier_study, trained_tiny_dir, sparsity, fragment):
    extra = [] if sparsity is None else ["--sparsity", sparsity]
    result = _run("apply", "--lookup", frontier_study["lookup"], "--model", trained_tiny_dir, *extra)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "[0.4, 0.6]" in lines[0]


def test_report_draws_the_frontier(frontier_study):
    out = frontier_study["root"] / "report"
    result = _run("study", "report", "front", "--out", out, "--storage", frontier_study["url"])
    assert result.exit_code == 0, result.output
    assert (out / "frontier.png").stat().st_size > 10_000
    for name in ("best_so_far.png", "best_allocation.png", "sparsity_vs_objective.png"):
        assert (out / name).is_file()
    # What it draws: per target the best trial (offset 0.1, value 0.5 + t) and the uniform one (offset 0).
    from studies import frontier_series, load_study_config

    config = load_study_config(frontier_study["database"], "front")
    complete = optuna.load_study(study_name="front", storage=frontier_study["url"]).get_trials()
    series = frontier_series(config, complete)
    np.testing.assert_allclose(series["best trial per target"], [(t, 10.5 + 20 * t, t + 0.05) for t in TARGETS])
    np.testing.assert_allclose(series["uniform"], [(t, 10.9 + 20 * t, t + 0.09) for t in TARGETS])


def test_the_index_is_plain_json_naming_each_point(frontier_study):
    index = json.loads((frontier_study["lookup"] / "lookup.json").read_text())
    assert [p["directory"] for p in index["points"]] == ["target-0.40", "target-0.50", "target-0.60"]


def test_a_run_frontier_study_exports_and_reports_every_target(sqlite_url, write_config, tmp_path):
    """A real frontier study (the runner's trials, not stored ones): every point from its own target's trials."""
    path = write_config(name="ran", sparsity={"target": [0.3, 0.6]}, trials=6, search={"validation_candidates": 2})
    config, _ = load_config(path)
    database = Database(sqlite_url)
    create_study(database, config)
    session = open_session(database, config)
    run_study(session)
    result = export_study(session, tmp_path / "lookup")
    trials = {t.number: t for t in optuna.load_study(study_name="ran", storage=sqlite_url).trials}
    assert [point.target for point in result.points] == [0.3, 0.6]
    for point in result.points:
        assert trials[point.trial_number].user_attrs["target"] == point.target
        assert abs(point.achieved_sparsity - point.target) < 1e-9
        assert read_lookup(point.path)["target_sparsity"] == point.target
    lookup = frontier_point(tmp_path / "lookup", 0.45)
    assert lookup["frontier"]["targets"] == [0.3, 0.6] and abs(lookup["achieved_sparsity"] - 0.45) < 1e-9
    written = write_report(database, "ran", tmp_path / "report")
    assert tmp_path / "report" / "frontier.png" in written


def test_status_and_list_show_the_best_of_each_target(frontier_study):
    """Values of different targets never compare: status shows one best per target, list the target range."""
    status = _run("study", "status", "front", "--storage", frontier_study["url"])
    assert status.exit_code == 0, status.output
    lines = {line.split(maxsplit=2)[1]: line for line in status.stdout.splitlines() if line.startswith("at ")}
    assert set(lines) == {"0.400", "0.500", "0.600"}
    for target in TARGETS:
        # The best trial at each target is its offset-0.1 trial (value 0.5 + target), never another target's.
        number = 3 * TARGETS.index(target) + 1
        assert f"3 complete; best trial {number}: search kl {0.5 + target:.4g}" in lines[f"{target:.3f}"]
    listed = _run("study", "list", "--storage", frontier_study["url"])
    assert listed.exit_code == 0, listed.output
    assert "0.40-0.60 (3)" in listed.stdout
