"""The lm-eval integration's own checks and its results file, with no model (runs: tests/studies/test_tasks.py)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from allocator import InputError
from allocator.integrations.lm_eval import (
    LMEvalNotInstalledError,
    TaskEvaluation,
    check_run_options,
    plain_json,
    prepare_tasks,
    task_names,
    task_results_document,
)


def test_a_missing_lm_eval_is_one_sentence(monkeypatch):
    for name in [name for name in sys.modules if name == "lm_eval" or name.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import lm_eval...` now raises ImportError
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(LMEvalNotInstalledError, match=r"not installed; `pip install sparsealloc\[eval\]`"):
        prepare_tasks("piqa")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ((-1, None, 8), "`num_fewshot` should be a whole number"),
        ((1.5, None, 8), "`num_fewshot` should be a whole number"),
        ((0, 2.5, 8), "`limit` should be a whole number of items, or a share"),
        ((0, 0.0, 8), "`limit` should be"),
        ((0, None, 0), "`batch_size` should be a positive whole number"),
        ((0, None, "auto"), "automatic batch size probes the model with batches of dummy tokens"),
    ],
)
def test_bad_run_options_are_one_sentence(options, fragment):
    with pytest.raises(InputError, match=fragment):
        check_run_options(*options)


def test_good_run_options_pass():
    for options in [(None, None, 1), (5, 0.1, 8), (0, 20, 16), (0, 20.0, 64)]:
        check_run_options(*options)


def test_task_names_come_from_a_comma_separated_list_or_a_sequence():
    assert task_names("piqa, arc_easy,,") == ("piqa", "arc_easy")
    assert task_names(["mmlu"]) == ("mmlu",)
    with pytest.raises(InputError, match="Name at least one lm-eval task"):
        task_names(" , ")


def test_an_include_path_that_is_no_folder_is_one_sentence(tmp_path):
    pytest.importorskip("lm_eval", reason="needs the `eval` extra: pip install -e '.[eval]'")
    with pytest.raises(InputError, match="given as include path is not a directory"):
        prepare_tasks("piqa", include_path=tmp_path / "nowhere")


def test_the_results_file_is_plain_json_with_lm_evals_document_at_its_top():
    """lm-eval's results hold dtypes, tuples, numpy numbers and NaN: the file holds JSON any reader reads."""
    results = {
        "results": {"toy": {"alias": "toy", "acc,none": np.float64(0.75), "acc_stderr,none": "N/A"}},
        "n-shot": {"toy": np.int64(0)},
        "config": {"dtype": torch.float32, "batch_sizes": (4,)},
        "samples": {"toy": [{"doc_id": 0, "resps": [[(-1.5, False)]], "score": math.nan}]},
    }
    dense = {"results": {"toy": {"alias": "toy", "acc,none": 0.5, "acc_stderr,none": "N/A"}}}
    evaluation = TaskEvaluation(results=results, dense=dense, measured_sparsity=0.49, lookup={"path": "/x"})
    assert evaluation.comparison() == [("toy", "acc", 0.75, 0.5)]
    document = json.loads(json.dumps(task_results_document(evaluation), allow_nan=False))
    assert document["results"]["toy"]["acc,none"] == 0.75 and document["n-shot"] == {"toy": 0}
    assert document["config"] == {"dtype": "torch.float32", "batch_sizes": [4]}
    assert document["samples"]["toy"][0] == {"doc_id": 0, "resps": [[[-1.5, False]]], "score": None}
    extra = document["sparsealloc"]
    assert extra["format"] == "sparsealloc.tasks/v1" and extra["measured_sparsity"] == 0.49
    assert extra["difference"] == {"toy": {"acc": 0.25}} and extra["dense"]["results"]["toy"]["acc,none"] == 0.5
    assert plain_json({1: {2, 3}}) == {"1": "{2, 3}"}
