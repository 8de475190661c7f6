"""`sparsealloc tasks`: lm-evaluation-harness's downstream tasks on a model with an exported lookup installed.

Everything runs for real and offline: the real lm-eval (the `eval` extra) on a small multiple-choice task that
each test writes (a JSONL file and a task YAML, lm-eval's own `--include-path` mechanism), with a real
`study export` of the tiny trained Llama (and, marked `smollm2`, a lookup calibrated on the embedded SmolLM2).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

from allocator import Score, build_lookup, calibrate, load_model, load_text, make_token_sets, write_lookup
from allocator.testing.local_tasks import write_multiple_choice_task
from storage import Database
from studies import create_study, load_config
from studies.cli import cli

from .conftest import tiny_config

pytest.importorskip("lm_eval", reason="needs the `eval` extra: pip install -e '.[eval]'")

# lm-eval reads task data through `datasets`: never reach for the Hub (the local task needs none of it).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASK = "toy_sums"


def _run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def write_task(directory: Path, name: str, items: int, *, seed: int = 0) -> Path:
    """A local multiple-choice task: ``items`` sums with four answers each (JSONL) and the YAML that reads them."""
    rng = random.Random(seed)
    docs = []
    for _ in range(items):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        choices = [str(a + b), str(a + b + 1), str(a * b), str(abs(a - b))]
        rng.shuffle(choices)
        docs.append({"question": f"{a} plus {b} is", "choices": choices, "answer": choices.index(str(a + b))})
    return write_multiple_choice_task(directory, name, docs, doc_to_text="Question: {{question}}\nAnswer:")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("tasks"), TASK, 16)


@pytest.fixture(scope="module")
def export(tmp_path_factory, trained_tiny_dir) -> Path:
    """A real `study export` at 50% of one stored trial (the blocks of the tiny Llama weigh alike)."""
    root = tmp_path_factory.mktemp("tasks-export")
    url = f"sqlite:///{root / 'study.db'}"
    path = root / "tasks.yaml"
    path.write_text(yaml.safe_dump(tiny_config(trained_tiny_dir, name="tasks", search={"validation_candidates": 1})))
    config, _ = load_config(path)
    database = Database(url, create=True)
    create_study(database, config)
    study = optuna.load_study(study_name="tasks", storage=database.optuna_storage)
    attrs = {"vector": [0.6, 0.45, 0.45], "target": 0.5, "rung_values": [1.0], "measured_sparsity": 0.5}
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs=attrs))
    result = _run("study", "export", "tasks", "--out", root / "lookup", "--storage", url)
    assert result.exit_code == 0, result.output
    return root / "lookup"


def _zero_copy(export: Path, directory: Path) -> Path:
    """The export's lookup with every threshold and sparsity 0: the sparsifiers zero nothing."""
    lookup = json.loads((export / "lookup.json").read_text())
    for block in lookup["blocks"]:
        block["sparsity"] = 0.0
        for site in block["sites"].values():
            site.update(sparsity=0.0, threshold=0.0)
    lookup["target_sparsity"] = lookup["achieved_sparsity"] = 0.0
    directory.mkdir()
    (directory / "lookup.json").write_text(json.dumps(lookup))
    return directory


def _loglikelihoods(document: dict) -> list[list[float]]:
    """Per item (by doc_id), each choice's log-likelihood, from a results document's samples."""
    items = sorted(document["samples"][TASK], key=lambda item: item["doc_id"])
    return [[response[0][0] for response in item["resps"]] for item in items]


def _refused(result, fragment: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert fragment in lines[0], lines[0]
    return lines[0]


def test_tasks_prints_lm_evals_table_the_measured_sparsity_and_the_dense_difference(
    export, task_dir, trained_tiny_dir, tmp_path
):
    out = tmp_path / "results.json"
    started = time.perf_counter()
    result = _run(
        "tasks", "--lookup", export, "--model", trained_tiny_dir, "--tasks", TASK, "--include-path", task_dir,
        "--dense", "--out", out, "--log-samples", "--batch-size", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 120
    stdout = result.stdout
    assert "| Tasks" in stdout and "|acc" in stdout  # lm-eval's own table, twice (sparse and dense)
    assert stdout.count(f"|{TASK}") == 2
    document = json.loads(out.read_text())
    accuracy = document["results"][TASK]["acc,none"]
    dense_accuracy = document["sparsealloc"]["dense"]["results"][TASK]["acc,none"]
    assert 0.0 <= accuracy <= 1.0 and document["n-shot"][TASK] == 0 and TASK in document["configs"]
    row = next(line for line in stdout.splitlines() if line.startswith(TASK) and " acc " in line)
    assert row.split()[2:] == [f"{accuracy:.4f}", f"{dense_accuracy:.4f}", f"{accuracy - dense_accuracy:+.4f}"]
    assert document["sparsealloc"]["difference"][TASK]["acc"] == pytest.approx(accuracy - dense_accuracy)
    # The sparsity the model ran at on the task's inputs, printed and written; thresholds of pydoc text.
    measured = float(stdout.split("measured ")[1].split()[0])
    assert document["sparsealloc"]["measured_sparsity"] == pytest.approx(measured, abs=5e-5)
    assert 0.3 < measured < 0.7
    assert "target 0.5000" in stdout
    # The lookup's provenance: the study and the trial it exported.
    provenance = document["sparsealloc"]["lookup"]
    assert provenance["study"]["name"] == "tasks" and provenance["study"]["trial"] == 0
    assert provenance["target_sparsity"] == 0.5 and provenance["path"] == str(export) and "blocks" not in provenance
    # Every item's log-likelihoods move where the sparsifiers are installed (accuracy on 16 items may not).
    sparse, dense = _loglikelihoods(document), _loglikelihoods(document["sparsealloc"]["dense"])
    assert len(sparse) == len(dense) == 16
    assert all(a != pytest.approx(b, abs=1e-4) for a, b in zip(sparse, dense, strict=True))


def test_an_all_zero_lookup_runs_the_dense_model_bit_for_bit(export, task_dir, trained_tiny_dir, tmp_path):
    from allocator.integrations.lm_eval import evaluate_tasks, item_loglikelihoods

    zero = _zero_copy(export, tmp_path / "zero")
    loaded = load_model(trained_tiny_dir)
    evaluation = evaluate_tasks(
        loaded.model, loaded.tokenizer, zero, TASK, include_path=task_dir, dense=True, log_samples=True, batch_size=4
    )
    assert evaluation.measured_sparsity == 0.0
    assert item_loglikelihoods(evaluation.results) == item_loglikelihoods(evaluation.dense)
    assert evaluation.comparison() and all(sparse == dense for _, _, sparse, dense in evaluation.comparison())
    assert not any(module._forward_pre_hooks for module in loaded.model.modules())  # dense again


def test_an_unknown_task_or_unreadable_task_data_is_one_sentence_before_the_model_loads(export, task_dir, tmp_path):
    missing_model = tmp_path / "no-model"  # never loaded: the tasks are refused first
    line = _refused(
        _run("tasks", "--lookup", export, "--model", missing_model, "--tasks", f"{TASK},toy_sumz", "--include-path",
             task_dir),
        "lm-eval has no task 'toy_sumz'",
    )  # fmt: skip
    assert f"did you mean '{TASK}'" in line
    broken = write_task(tmp_path / "broken", "broken_sums", 4)
    (broken / "broken_sums.jsonl").unlink()
    _refused(
        _run("tasks", "--lookup", export, "--model", missing_model, "--tasks", "broken_sums", "--include-path", broken),
        "lm-eval cannot load task 'broken_sums'",
    )


def test_an_unwritable_out_or_samples_without_out_are_refused_before_the_tasks_load(export, task_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _run(
        "tasks", "--lookup", export, "--model", tmp_path / "no-model", "--tasks", "no_such_task",
        "--out", blocker / "results.json",
    )  # fmt: skip
    _refused(result, "Cannot write the task results to")
    no_out = _run("tasks", "--lookup", export, "--model", tmp_path / "no-model", "--tasks", TASK, "--log-samples")
    _refused(no_out, "--log-samples writes lm-eval's per-item records to the results file; give --out too.")


@pytest.mark.smollm2
def test_smollm2_with_a_calibrated_lookup_runs_lm_eval_end_to_end(tmp_path):
    """SmolLM2 with every site at 50% (thresholds calibrated on pydoc), on 32 local items, sparse and dense."""
    started = time.perf_counter()
    loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
    tokens = make_token_sets(load_text("pydoc"), loaded.tokenizer, seq_len=128, counts={"calibration": 8}, seed=0)
    calibration = calibrate(loaded.adapter, tokens.calibration, score=Score(), model_fingerprint=loaded.fingerprint)
    weights = loaded.adapter.site_weights()
    sites = torch.full(weights.shape, 0.5, dtype=torch.float64)
    lookup = build_lookup(
        model=loaded.identity(),
        score=Score(),
        sparsify_fraction=1.0,
        split="uniform",
        target=0.5,
        block_sparsities=(sites * weights).sum(dim=1) / weights.sum(dim=1),
        site_sparsities=sites,
        thresholds=calibration.thresholds(sites),
        site_weights=weights,
        calibration={"tokens": calibration.n_tokens},
        study={"name": "smollm2-uniform"},
    )
    write_lookup(tmp_path / "lookup", lookup)
    task_dir = write_task(tmp_path / "tasks", TASK, 32, seed=1)
    del loaded
    out = tmp_path / "results.json"
    result = _run(
        "tasks", "--lookup", tmp_path / "lookup", "--model", "smollm2-135m", "--device", "cpu", "--dtype", "float32",
        "--tasks", TASK, "--include-path", task_dir, "--dense", "--out", out, "--log-samples",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["sparsealloc"]["lookup"]["model"]["name"] == "smollm2-135m"
    assert abs(document["sparsealloc"]["measured_sparsity"] - 0.5) < 0.1  # calibrated on pydoc, run on sums
    sparse, dense = _loglikelihoods(document), _loglikelihoods(document["sparsealloc"]["dense"])
    assert len(sparse) == 32 and sparse != dense
    assert time.perf_counter() - started < 120
