"""`sparsealloc apply --lookup` refuses a lookup that type-checks but means nothing, in one sentence naming the
field (exit status 2), whether the broken invariant shows in the file alone or only against the model.

The lookups are a real `study export` of a frontier study (targets 0.4 and 0.6) on the tiny trained Llama;
each frontier point's directory is a complete single-target lookup, as a single-target study exports it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from storage import Database
from studies import create_study, load_config
from studies.cli import cli

from .conftest import tiny_config

TARGETS = (0.4, 0.6)
SMALL = ("--sequences", "1", "--seq-len", "32", "--batch-size", "1")


def _run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def export(tmp_path_factory, trained_tiny_dir) -> Path:
    """A frontier export of stored trials (one vector per target, on its constraint: the blocks weigh alike)."""
    root = tmp_path_factory.mktemp("meaning")
    url = f"sqlite:///{root / 'study.db'}"
    path = root / "meaning.yaml"
    overrides = {"name": "meaning", "sparsity": {"target": list(TARGETS)}, "search": {"validation_candidates": 1}}
    path.write_text(yaml.safe_dump(tiny_config(trained_tiny_dir, **overrides)))
    config, _ = load_config(path)
    database = Database(url, create=True)
    create_study(database, config)
    study = optuna.load_study(study_name="meaning", storage=database.optuna_storage)
    for target in TARGETS:
        vector = [target + 0.1, target - 0.05, target - 0.05]
        attrs = {"vector": vector, "target": target, "rung_values": [1.0], "measured_sparsity": target}
        study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs=attrs))
    result = _run("study", "export", "meaning", "--out", root / "lookup", "--storage", url)
    assert result.exit_code == 0, result.output
    return root / "lookup"


def _planted(export: Path, tmp_path: Path, mutate, *, point: str = "target-0.40", whole: bool = False) -> Path:
    """A copy of one point's lookup (or of the ``whole`` frontier export) with ``mutate`` applied to the point."""
    copy = tmp_path / "copy"
    shutil.copytree(export if whole else export / point, copy)
    file = (copy / point if whole else copy) / "lookup.json"
    lookup = json.loads(file.read_text())
    mutate(lookup)
    file.write_text(json.dumps(lookup))
    return copy


def _refused(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # progress may come first; one sentence
    assert "Traceback" not in result.output
    assert all(fragment in errors[0] for fragment in fragments), errors[0]
    return errors[0]


def _set(path: str, value):
    def mutate(lookup: dict) -> None:
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        node = lookup
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def _achieved_between_the_blocks(lookup: dict) -> None:
    """Target and achieved moved together, still between the block sparsities: only the site weights tell."""
    low = min(block["sparsity"] for block in lookup["blocks"])
    lookup["achieved_sparsity"] = lookup["target_sparsity"] = (low + lookup["achieved_sparsity"]) / 2


def _extra_block(lookup: dict) -> None:
    lookup["model"]["n_blocks"] += 1
    lookup["blocks"].append({**lookup["blocks"][-1], "index": len(lookup["blocks"])})


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        (_set("target_sparsity", "fifty"), ('target_sparsity is "fifty"', "should be a valid number")),
        (_set("blocks.2.index", 1), ("blocks[2].index is 1, as is blocks[1].index",)),
        (_set("blocks.0.sparsity", 0.1), ("blocks[0].sparsity is 0.1, outside the range of its sites'",)),
        (_set("blocks.1.sites.q.threshold", -0.2), ("blocks[1].sites.q.threshold is -0.2", "non-negative")),
        (_set("target_sparsity", 0.3), ("target_sparsity is 0.3, but achieved_sparsity is 0.4",)),
        (_achieved_between_the_blocks, ("achieved_sparsity is", "parameter-weighted mean of every site's")),
        (_extra_block, ("model.n_blocks is 4, but the model has 3 blocks",)),
    ],
    ids=[
        "target not a number",
        "duplicate index",
        "block off its sites",
        "negative threshold",
        "target off",
        "achieved off the weighted mean",
        "more blocks than the model",
    ],
)
def test_apply_refuses_a_lookup_that_means_nothing(export, tmp_path, trained_tiny_dir, mutate, fragments):
    lookup = _planted(export, tmp_path, mutate)
    before = (lookup / "lookup.json").read_bytes()
    result = _run("apply", "--lookup", lookup, "--model", trained_tiny_dir, *SMALL)
    error = _refused(result, f"Lookup {str(lookup / 'lookup.json')!r}", *fragments)
    assert "perplexity" not in result.stdout, error
    assert (lookup / "lookup.json").read_bytes() == before  # a reader: nothing written


def test_apply_refuses_a_frontier_point_whose_quantile_table_decreases(export, tmp_path, trained_tiny_dir):
    def decrease(lookup: dict) -> None:
        table = lookup["blocks"][1]["sites"]["up"]["quantiles"]
        table[20] = table[19] / 2

    copy = _planted(export, tmp_path, decrease, whole=True)
    result = _run("apply", "--lookup", copy, "--model", trained_tiny_dir, "--sparsity", "0.5", *SMALL)
    point = repr(str(copy / "target-0.40" / "lookup.json"))
    _refused(result, point, "blocks[1].sites.up.quantiles[20] is", "a quantile table must be non-decreasing")


def test_apply_loads_the_export_as_written_and_a_target_not_recorded(export, tmp_path, trained_tiny_dir):
    result = _run("apply", "--lookup", export, "--model", trained_tiny_dir, "--sparsity", "0.5", *SMALL)
    assert result.exit_code == 0, result.output
    assert "target 0.5000 (interpolated between the frontier's points at 0.4 and 0.6)" in result.stdout
    lookup = _planted(export, tmp_path, _set("target_sparsity", None))
    result = _run("apply", "--lookup", lookup, "--model", trained_tiny_dir, *SMALL)
    assert result.exit_code == 0, result.output
    assert "target not recorded" in result.stdout
