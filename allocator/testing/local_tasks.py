"""Local lm-evaluation-harness tasks for tests and benchmarks: run offline, with no dataset hub.

A task is a JSONL file of items and the task YAML that reads it, lm-eval's own mechanism for local data (the
README's "Downstream tasks" shows the same YAML); the folder is what ``include_path`` takes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def write_multiple_choice_task(
    directory: Path, name: str, items: Sequence[dict[str, Any]], *, doc_to_text: str
) -> Path:
    """Write task ``name`` into ``directory`` (created if needed) and return the folder: ``items`` (each with
    ``choices`` and the index ``answer`` of the right one, plus the fields ``doc_to_text`` reads) as
    ``<name>.jsonl``, and ``<name>.yaml``, a zero-shot multiple-choice task scored by accuracy."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": doc_to_text,
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return directory
