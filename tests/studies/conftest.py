"""Study fixtures: configurations on the tiny trained Llama with small token budgets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml


def tiny_config(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "tiny",
        "model": str(model_dir),
        "data": {"calibration": "pydoc", "seq_len": 32, "calibration_sequences": 6, "heldout_sequences": 4},
        "sparsity": {"target": 0.5, "lower": 0.0, "upper": 0.9},
        "sampler": {"name": "random"},
        "trials": 4,
        "seed": 0,
        "evaluation": {"batch_size": 3},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = copy.deepcopy(value)
    return config


@pytest.fixture
def write_config(tmp_path, trained_tiny_dir):
    """Write a tiny study YAML file with overrides; returns its path."""

    def write(**overrides: Any) -> Path:
        config = tiny_config(trained_tiny_dir, **overrides)
        path = tmp_path / f"{config['name']}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write
