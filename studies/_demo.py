"""The demo study: what ``make demo`` runs on the embedded SmolLM2 and the pydoc corpus."""

from __future__ import annotations

from studies._config import StudyConfig, parse_config

DEMO_TRIALS = 30


def demo_config(trials: int | None = None) -> StudyConfig:
    """A `bo` study at 50% model-level sparsity, sized to finish well inside 20 minutes on 2 CPU cores."""
    return parse_config(
        {
            "name": "demo-bo-50",
            "model": "smollm2-135m",
            "data": {"calibration": "pydoc", "seq_len": 256, "calibration_sequences": 8, "heldout_sequences": 16},
            "sparsity": {"target": 0.5, "lower": 0.0, "upper": 0.9},
            "sampler": {"name": "bo"},
            "trials": trials or DEMO_TRIALS,
            "seed": 0,
        },
        source="demo",
    )
