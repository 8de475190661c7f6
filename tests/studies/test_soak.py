"""A short fault soak (the long one is bench/soak.py): workers SIGKILLed at random moments and replaced."""

from __future__ import annotations

import pytest

from allocator.testing.tiny import build_tiny_model_dir
from studies.testing.soak import run_soak

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("backend", "workers"), [pytest.param("postgres", 3, marks=pytest.mark.postgres), ("sqlite", 2)]
)
def test_short_soak_loses_and_repeats_nothing(request, tmp_path, backend, workers):
    url = request.getfixturevalue(f"{backend}_url")
    result = run_soak(
        url=url,
        backend=backend,
        model_dir=build_tiny_model_dir(tmp_path / "model"),
        workdir=tmp_path / "soak",
        workers=workers,
        kills=3,
        trials=10,
        gap_s=(0.5, 3.0),
        timeout_s=600,
        log=lambda line: None,
    )
    assert result.kills == 3 and result.window_kills == 1
    assert result.ok, result.as_dict()
