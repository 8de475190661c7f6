"""Study fixtures: configurations on the tiny trained Llama with small token budgets."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml


def tiny_config(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "tiny",
        "model": str(model_dir),
        "data": {
            "source": "pydoc",
            "seq_len": 32,
            "calibration_sequences": 6,
            "search_sequences": 10,
            "validation_sequences": 3,
            "heldout_sequences": 4,
        },
        "search": {"screen_sequences": 6, "promote_sequences": [4]},
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


# The console script of the interpreter running the tests (its virtual environment need not be on PATH).
SPARSEALLOC = str(Path(sys.executable).with_name("sparsealloc"))


class Processes:
    """``sparsealloc`` processes a test starts; every one is killed when the test ends, however it ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        process = subprocess.Popen(
            [SPARSEALLOC, *args],
            env=environment,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: killed whole, never left behind
        )
        self.started.append(process)
        return process

    def finish(self, process: subprocess.Popen, timeout: float = 600, *, expect: int = 0) -> str:
        """The process's output once it exits with status ``expect``; killed (and the test failed) on timeout."""
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(process)
            output, _ = process.communicate()
            pytest.fail(f"`sparsealloc` did not finish within {timeout} s:\n{output}")
        assert process.returncode == expect, output
        return output

    def run(self, *args: str, expect: int = 0, timeout: float = 600, **kwargs: Any) -> str:
        return self.finish(self.start(*args, **kwargs), timeout, expect=expect)

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def kill_all(self) -> None:
        for process in self.started:
            self._kill(process)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    tracker = Processes()
    try:
        yield tracker
    finally:
        tracker.kill_all()
