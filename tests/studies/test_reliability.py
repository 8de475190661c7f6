"""Issue 10's catalogue, each case through the command line where a user meets it: one sentence on stderr,
exit status 2, nothing stored lost, nothing written that was not asked for."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from allocator.testing.tiny import build_tiny_model, save_model_dir
from storage import Database
from tests.studies.conftest import tiny_config
from tests.studies.test_bad_input import assert_refused, run


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, trained_tiny_dir):
    """A working directory holding a study's YAML, its SQLite database with two finished trials, and an export."""
    root = tmp_path_factory.mktemp("study")
    config = _write(root / "tiny.yaml", tiny_config(trained_tiny_dir, trials=2))
    url = f"sqlite:///{root / 'study.db'}"
    for args in (
        ("study", "create", config),
        ("study", "run", "tiny"),
        ("study", "export", "tiny", "--out", root / "out"),
    ):
        result = run(*args, "--storage", url)
        assert result.exit_code == 0, result.output
    return {"root": root, "url": url, "db": root / "study.db", "yaml": config, "lookup": root / "out"}


def _copy_database(source: Path, target: Path) -> Path:
    """A self-contained copy of a SQLite study database (its write-ahead log folded in first)."""
    with sqlite3.connect(source) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(source, target)
    with sqlite3.connect(target) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")
    return target


def _complete(url: str, name: str = "tiny") -> dict[int, float]:
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    return {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}


# -- 1. an orphaned trial (created, never heartbeaten) no longer hangs a study ------------------------------------
def test_a_trial_left_without_a_heartbeat_is_retried_and_the_study_finishes(storage_url, write_config):
    path = write_config(trials=3)
    assert run("study", "create", path, "--storage", storage_url).exit_code == 0
    assert run("study", "run", "tiny", "--trials", "1", "--storage", storage_url).exit_code == 0
    database = Database(storage_url, create=False)
    study_id = database.optuna_storage.get_study_id_from_name("tiny")
    orphan = database.optuna_storage.create_new_trial(study_id)  # a worker killed between ask() and heartbeat
    result = run("study", "resume", "tiny", "--storage", storage_url)  # waits out the grace period, then retries
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=storage_url).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert [t.state for t in trials if t._trial_id == orphan] == [TrialState.FAIL]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert "3/3 complete, 0 running" in run("study", "status", "tiny", "--storage", storage_url).output


# -- 2. an export replaces only an earlier export ------------------------------------------------------------------
def test_export_into_the_working_directory_or_a_folder_of_other_files_is_refused(study_dir, monkeypatch):
    before = {p.name: _digest(p) for p in (study_dir["db"], study_dir["yaml"])}
    root = study_dir["root"]
    assert_refused(
        run("study", "export", "tiny", "--out", root, "--storage", study_dir["url"]), "not a sparsealloc export"
    )
    monkeypatch.chdir(root)
    assert_refused(run("study", "export", "tiny", "--out", ".", "--storage", study_dir["url"]), "working directory")
    assert {p.name: _digest(p) for p in (study_dir["db"], study_dir["yaml"])} == before
    assert len(_complete(study_dir["url"])) == 2


def test_export_and_report_into_an_unwritable_place_are_one_sentence(study_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = study_dir["url"]
    assert_refused(
        run("study", "export", "tiny", "--out", blocker / "out", "--storage", url), "Cannot write the export"
    )
    assert_refused(
        run("study", "report", "tiny", "--out", blocker / "plots", "--storage", url), "Cannot write the report"
    )
    assert_refused(run("study", "export", "tiny", "--out", blocker, "--storage", url), "is not a directory")
    assert blocker.read_text() == "not a directory"


# -- 3. a read-only database stops the run with one sentence, no reconnect loop -------------------------------------
def test_a_read_only_database_is_one_sentence_not_a_reconnect_loop(study_dir, tmp_path):
    copy = _copy_database(study_dir["db"], tmp_path / "ro.db")
    url = f"sqlite:///file:{copy}?mode=ro&uri=true"
    result = run("study", "run", "tiny", "--trials", "3", "--storage", url)
    assert_refused(result, "attempt to write a readonly database")
    assert "reconnecting" not in result.output
    assert len(_complete(f"sqlite:///{copy}")) == 2


# -- 4. passwords in the query or with a raw @ never show (PostgreSQL: tests/studies/test_faults.py) ---------------
# -- 5. damaged databases and lookups are one sentence ------------------------------------------------------------
@pytest.mark.parametrize("damage", ["random", "truncated"])
@pytest.mark.parametrize(
    "args", [("study", "list"), ("study", "status", "tiny"), ("study", "run", "tiny"), ("study", "export", "tiny")]
)
def test_a_damaged_database_file_is_one_sentence(study_dir, tmp_path, damage, args):
    path = tmp_path / "damaged.db"
    if damage == "random":
        path.write_bytes(hashlib.sha256(b"x").digest() * 256)
    else:
        data = _copy_database(study_dir["db"], tmp_path / "whole.db").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    extra = ("--out", tmp_path / "out") if args[-2:] == ("export", "tiny") else ()
    result = run(*args, *extra, "--storage", f"sqlite:///{path}")
    assert_refused(result, "database")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda lookup: lookup["blocks"][0]["sites"]["q"].update(threshold="0.3"), 'threshold is "0.3"; it should be'),
        (lambda lookup: lookup.update(sparsify_fraction="lots"), 'sparsify_fraction is "lots"'),
        (lambda lookup: lookup.update(sparsify_fraction=None), "sparsify_fraction is null"),
        (lambda lookup: lookup["blocks"][1]["sites"].pop("down"), "no entry for site(s) down"),
        (lambda lookup: lookup["model"].update(n_blocks=True), "model.n_blocks is true"),
    ],
)
def test_a_lookup_with_wrong_types_is_refused_before_loading_the_model(study_dir, tmp_path, edit, fragment):
    lookup = json.loads((study_dir["lookup"] / "lookup.json").read_text())
    edit(lookup)
    damaged = tmp_path / "lookup"
    damaged.mkdir()
    (damaged / "lookup.json").write_text(json.dumps(lookup))
    assert_refused(run("apply", "--lookup", damaged, "--model", tmp_path / "no-such-model"), fragment)


def test_a_lookup_for_another_model_of_the_same_shapes_is_refused(study_dir, tiny_tokenizer, tmp_path):
    twin = save_model_dir(build_tiny_model("llama", len(tiny_tokenizer), seed=123), tiny_tokenizer, tmp_path / "twin")
    assert_refused(run("apply", "--lookup", study_dir["lookup"], "--model", twin), "made for another model")


# -- 6. whatever can be checked without the model's weights is checked by `study create` -------------------------
@pytest.mark.parametrize(
    ("sparsity", "fragment"),
    [
        ({"lower": [0.0, 0.1]}, "`lower` must be a scalar or a sequence of 3 values"),
        ({"upper": [0.9, 0.9, 0.9, 0.9]}, "`upper` must be a scalar or a sequence of 3 values"),
        ({"lower": [0.6, 0.0, 0.0], "upper": [0.5, 0.9, 0.9]}, "block 0 has lower 0.6 > upper 0.5"),
        ({"target": 0.8, "upper": [0.9, 0.5, 0.5]}, "not reachable within the per-block bounds"),
    ],
)
def test_bad_per_block_bounds_are_refused_by_create_with_nothing_stored(tmp_path, trained_tiny_dir, sparsity, fragment):
    config = _write(tmp_path / "s.yaml", tiny_config(trained_tiny_dir, sparsity=sparsity))
    assert_refused(run("study", "create", config, "--storage", f"sqlite:///{tmp_path / 'new.db'}"), fragment)
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"sampler": {"name": "bo", "options": {"n_inital": 4}}}, "Unknown option `n_inital` for sampler 'bo'"),
        ({"trials": True}, "`trials`: Input should be a valid integer"),
        ({"data": {"seed": 2**70}}, "`data.seed`: Input should be less than or equal to 4294967295"),
        ({"sparsity": {"target": float("nan")}}, "`sparsity.target`: Input should be a finite number"),
    ],
)
def test_bad_values_are_refused_before_the_model_is_even_looked_at(tmp_path, overrides, fragment):
    # The model path does not exist: the refusal names the value, so it came before any look at the model.
    config = _write(tmp_path / "s.yaml", tiny_config(tmp_path / "no-such-model", **overrides))
    assert_refused(run("study", "create", config, "--storage", f"sqlite:///{tmp_path / 'new.db'}"), fragment)
    assert not (tmp_path / "new.db").exists()


def test_a_key_given_twice_is_refused_by_create(tmp_path, trained_tiny_dir):
    text = yaml.safe_dump(tiny_config(trained_tiny_dir)) + "trials: 40\n"
    (tmp_path / "s.yaml").write_text(text)
    result = run("study", "create", tmp_path / "s.yaml", "--storage", f"sqlite:///{tmp_path / 'new.db'}")
    assert_refused(result, "duplicate key 'trials'")


def test_a_study_can_be_deleted_and_its_name_reused(tmp_path, trained_tiny_dir):
    url = f"sqlite:///{tmp_path / 'db.db'}"
    first = _write(tmp_path / "a.yaml", tiny_config(trained_tiny_dir, trials=1))
    assert run("study", "create", first, "--storage", url).exit_code == 0
    assert run("study", "run", "tiny", "--storage", url).exit_code == 0
    assert_refused(run("study", "delete", "tiny", "--storage", url), "run it again with --yes")
    assert "1/1 complete" in run("study", "status", "tiny", "--storage", url).output
    result = run("study", "delete", "tiny", "--yes", "--storage", url)
    assert result.exit_code == 0 and "deleted study 'tiny' (1 trials)" in result.output
    assert_refused(run("study", "status", "tiny", "--storage", url), "No study named 'tiny'")
    second = _write(tmp_path / "b.yaml", tiny_config(trained_tiny_dir, trials=2))
    assert run("study", "create", second, "--storage", url).exit_code == 0  # the name is free again
    assert "Reused the stored calibration" in run("study", "run", "tiny", "--storage", url).output
    assert_refused(run("study", "delete", "nope", "--yes", "--storage", url), "No study named 'nope'")


# -- 7. the smaller ones -------------------------------------------------------------------------------------------
def test_resume_takes_trials(study_dir, tmp_path):
    copy = _copy_database(study_dir["db"], tmp_path / "copy.db")
    url = f"sqlite:///{copy}"
    result = run("study", "resume", "tiny", "--trials", "3", "--storage", url)
    assert result.exit_code == 0 and "3/3 trials complete" in result.output


def test_reading_another_applications_sqlite_file_changes_nothing(tmp_path):
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
        connection.execute("INSERT INTO notes VALUES ('keep me')")
    before = _digest(path)
    result = run("study", "list", "--storage", f"sqlite:///{path}")
    assert result.exit_code == 0 and "no studies in" in result.output
    assert_refused(run("study", "status", "x", "--storage", f"sqlite:///{path}"), "No study named 'x'")
    assert _digest(path) == before
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in connection.execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_no_stray_database_files_appear(tmp_path, trained_tiny_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEALLOC_STORAGE", "")
    assert_refused(run("study", "list"), "No sparsealloc database at sparsealloc.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = tiny_config(trained_tiny_dir, trials=1) | {"storage": f"sqlite:///{elsewhere / 'study.db'}"}
    assert run("study", "create", _write(tmp_path / "s.yaml", config)).exit_code == 0
    assert_refused(run("study", "run", "tiny"), "No sparsealloc database at sparsealloc.db")
    assert not (tmp_path / "sparsealloc.db").exists()
    assert (elsewhere / "study.db").exists()


# -- device and precision (issue 13) -----------------------------------------------------------------------------
def test_a_device_this_machine_lacks_is_refused_before_anything_is_stored(tmp_path, trained_tiny_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model = {"source": str(trained_tiny_dir), "device": "cuda"}
    config = _write(tmp_path / "s.yaml", tiny_config(trained_tiny_dir) | {"model": model})
    result = run("study", "create", config, "--storage", f"sqlite:///{tmp_path / 'new.db'}")
    assert_refused(result, "The device 'cuda' was asked for, but this machine has no CUDA GPU")
    assert not (tmp_path / "new.db").exists()
    assert_refused(run("evaluate", "--model", trained_tiny_dir, "--sparsity", "0.5", "--device", "cuda:1"), "no CUDA")


def test_a_bfloat16_study_runs_and_keys_its_artifacts_by_dtype(tmp_path, trained_tiny_dir):
    url = f"sqlite:///{tmp_path / 'db.db'}"
    model = {"source": str(trained_tiny_dir), "device": "cpu", "dtype": "bfloat16"}
    for name, entry in (("half", model), ("full", str(trained_tiny_dir))):
        config = _write(
            tmp_path / f"{name}.yaml", tiny_config(trained_tiny_dir, name=name, trials=3) | {"model": entry}
        )
        assert run("study", "create", config, "--storage", url).exit_code == 0
        result = run("study", "run", name, "--storage", url)
        assert result.exit_code == 0 and "Computed calibration" in result.output, result.output  # one per dtype
    trials = optuna.load_study(study_name="half", storage=url).get_trials()
    assert all(abs(t.user_attrs["measured_sparsity"] - 0.5) < 0.01 for t in trials)
    export = run("study", "export", "half", "--out", tmp_path / "lookup", "--storage", url)
    assert export.exit_code == 0, export.output
