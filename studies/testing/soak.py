"""The fault soak: workers on one study, killed with SIGKILL at random moments and replaced.

A study on a tiny model with a cheap objective runs with ``workers`` processes while the driver kills a
random worker ``kills`` times (SIGKILL, at a random moment) and starts a new one in its place; then the
workers finish the study. The checks: exactly the requested number of finished trials, no finished trial
lost (every trial ever seen COMPLETE stays COMPLETE with the same value), no proposal evaluated twice (the
COMPLETE trials' vectors are distinct), every finished trial on the constraint, and the stored calibration
intact (one ready calibration that loads). Used by ``bench/soak.py`` and by a short test.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session

from allocator import Calibration
from allocator.samplers import evaluated_vector
from storage import CalibrationRecord, Database

SPARSEALLOC = str(Path(sys.executable).with_name("sparsealloc"))


@dataclass(frozen=True)
class SoakResult:
    backend: str
    workers: int
    kills: int
    trials_requested: int
    trials_finished: int
    finished_lost: int
    duplicates: int
    off_constraint: int
    failed_trials: int
    retried_trials: int
    calibrations: int
    calibration_intact: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.trials_finished == self.trials_requested
            and self.finished_lost == 0
            and self.duplicates == 0
            and self.off_constraint == 0
            and self.calibrations == 1
            and self.calibration_intact
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def soak_config(model_dir: Path, *, name: str, trials: int, sampler: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": str(model_dir),
        "data": {"calibration": "pydoc", "seq_len": 32, "calibration_sequences": 16, "heldout_sequences": 2},
        "sparsity": {"target": 0.5, "lower": 0.0, "upper": 0.9},
        "sampler": {"name": sampler},
        "trials": trials,
        "seed": 0,
        "evaluation": {"batch_size": 4, "heldout": "none"},
    }


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    handle = log.open("a")
    return subprocess.Popen([SPARSEALLOC, *args], env=env, stdout=handle, stderr=subprocess.STDOUT)


def run_soak(
    *,
    url: str,
    backend: str,
    model_dir: Path,
    workdir: Path,
    workers: int,
    kills: int,
    trials: int,
    sampler: str = "bo",
    seed: int = 0,
    gap_s: tuple[float, float] = (1.0, 6.0),
    timeout_s: float = 1800.0,
    log: Any = print,
) -> SoakResult:
    """Run one soak on ``url`` and check it; ``log`` receives progress lines."""
    rng = random.Random(seed)
    name = f"soak-{backend}"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(soak_config(model_dir, name=name, trials=trials, sampler=sampler)))
    worker_log = workdir / f"{name}-workers.log"
    created = subprocess.run(
        [SPARSEALLOC, "study", "create", str(config_path), "--storage", url], capture_output=True, text=True
    )
    if created.returncode != 0:
        raise RuntimeError(created.stderr)
    started = time.monotonic()
    seen_complete: dict[int, float] = {}

    def observe() -> list[optuna.trial.FrozenTrial]:
        trials_now = optuna.load_study(study_name=name, storage=url).get_trials()
        for trial in trials_now:
            if trial.state == TrialState.COMPLETE:
                seen_complete.setdefault(trial.number, float(trial.value))
        return trials_now

    pool = [_spawn(["worker", name, "--storage", url], worker_log) for _ in range(workers)]
    done_kills = 0
    while done_kills < kills and time.monotonic() - started < timeout_s:
        time.sleep(rng.uniform(*gap_s))
        observe()
        alive = [p for p in pool if p.poll() is None]
        if not alive:
            break  # the study finished before every kill was made
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        pool[pool.index(victim)] = _spawn(["worker", name, "--storage", url], worker_log)
        done_kills += 1
        log(f"{backend}: kill {done_kills}/{kills}, {len(seen_complete)} trials seen complete")
    for process in pool:
        remaining = max(1.0, timeout_s - (time.monotonic() - started))
        try:
            process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            process.kill()
    final = observe()
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    lost = sum(
        1
        for number, value in seen_complete.items()
        if not any(t.number == number and t.value == value for t in complete)
    )
    vectors = [np.asarray(evaluated_vector(t)) for t in complete]
    duplicates = len(vectors) - len({tuple(np.round(v, 12)) for v in vectors})
    database = Database(url)
    with Session(database.engine) as session:
        records = list(session.scalars(select(CalibrationRecord).where(CalibrationRecord.kind == "histograms")))
    intact = False
    if len(records) == 1 and records[0].status == "ready" and records[0].blob:
        try:
            Calibration.from_bytes(records[0].blob)
            intact = True
        except Exception:
            intact = False
    weights = None
    off_constraint = 0
    if complete:
        from allocator import load_model

        weights = load_model(model_dir).adapter.block_weights().numpy()
        for v in vectors:
            if abs(float(v @ weights) / weights.sum() - 0.5) > 1e-6 or v.min() < -1e-12 or v.max() > 0.9 + 1e-12:
                off_constraint += 1
    result = SoakResult(
        backend=backend,
        workers=workers,
        kills=done_kills,
        trials_requested=trials,
        trials_finished=len(complete),
        finished_lost=lost,
        duplicates=duplicates,
        off_constraint=off_constraint,
        failed_trials=sum(t.state == TrialState.FAIL for t in final),
        retried_trials=sum(1 for t in complete if "failed_trial" in t.system_attrs),
        calibrations=len(records),
        calibration_intact=intact,
        seconds=time.monotonic() - started,
    )
    log(f"{backend}: {result.as_dict()}")
    return result
