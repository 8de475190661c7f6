"""The fault soak: workers on one study, killed with SIGKILL at random moments and replaced.

A study on a tiny model with a cheap objective runs with ``workers`` processes while the driver makes
``kills`` kills at random moments, alternating two kinds:

* a random worker is SIGKILLed (mid-trial, mid-proposal, mid-calibration: wherever it is) and replaced;
* a *window kill*: a process opens the study, creates its trial with ``study.ask()`` (the trial is RUNNING)
  and is SIGKILLed before its first heartbeat, which is exactly the state a worker killed between creating
  its trial and its first heartbeat leaves (Optuna alone would keep such a trial RUNNING forever).

Then the workers finish the study. The checks: exactly the requested number of finished trials, no worker
still running at the deadline (no hang), no finished trial lost (every trial ever seen COMPLETE stays
COMPLETE with the same value), no proposal evaluated twice (the COMPLETE trials' vectors are distinct),
every finished trial on the constraint, and the stored calibration intact (one ready calibration that
loads). Every process the soak starts is killed when it ends, however it ends. Used by ``bench/soak.py``
and by a short test.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session

from allocator import Calibration, load_model
from allocator import trial_attributes as attrs
from storage import CalibrationRecord, Database

SPARSEALLOC = str(Path(sys.executable).with_name("sparsealloc"))

# A process that does what a worker does up to its trial's creation, then dies before any heartbeat.
_ASK_AND_DIE = """
import os, signal, sys
import optuna
from storage import Database
study = optuna.load_study(study_name=sys.argv[2], storage=Database(sys.argv[1], create=False).optuna_storage)
study.ask()
os.kill(os.getpid(), signal.SIGKILL)
"""


@dataclass(frozen=True)
class SoakResult:
    backend: str
    workers: int
    kills: int
    window_kills: int
    hangs: int
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
            and self.hangs == 0
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
        "data": {
            "source": "pydoc",
            "seq_len": 32,
            "calibration_sequences": 4,
            "search_sequences": 12,
            "validation_sequences": 2,
            "heldout_sequences": 2,
        },
        "sparsity": {"target": 0.5, "lower": 0.0, "upper": 0.9},
        "sampler": {"name": sampler},
        "trials": trials,
        "seed": 0,
        "search": {"screen_sequences": 8, "promote_sequences": [4]},
        "evaluation": {"batch_size": 4, "heldout": "none"},
    }


@dataclass
class _Driver:
    """The soak's processes and what it has seen."""

    url: str
    name: str
    log_file: Path
    pool: list[subprocess.Popen] = field(default_factory=list)
    others: list[subprocess.Popen] = field(default_factory=list)
    seen_complete: dict[int, float] = field(default_factory=dict)

    def spawn_worker(self) -> subprocess.Popen:
        return self._spawn([SPARSEALLOC, "worker", self.name, "--storage", self.url])

    def _spawn(self, command: list[str]) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with self.log_file.open("a") as handle:
            return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)

    def observe(self) -> list[optuna.trial.FrozenTrial]:
        trials = optuna.load_study(study_name=self.name, storage=self.url).get_trials()
        for trial in trials:
            if trial.state == TrialState.COMPLETE:
                self.seen_complete.setdefault(trial.number, float(trial.value))
        return trials

    def kill_a_worker(self, rng: random.Random) -> bool:
        alive = [p for p in self.pool if p.poll() is None]
        if not alive:
            return False  # the study finished before every kill was made
        victim = rng.choice(alive)
        _kill(victim)
        self.pool[self.pool.index(victim)] = self.spawn_worker()
        return True

    def kill_inside_the_window(self) -> None:
        doomed = self._spawn([sys.executable, "-c", _ASK_AND_DIE, self.url, self.name])
        self.others.append(doomed)
        doomed.wait(timeout=120)

    def wait_for_workers(self, deadline: float) -> int:
        """Wait for every worker to finish; returns how many were still running at ``deadline`` (hangs)."""
        hangs = 0
        for process in self.pool:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hangs += 1
        return hangs

    def kill_all(self) -> None:
        for process in [*self.pool, *self.others]:
            _kill(process)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


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
    created = subprocess.run(
        [SPARSEALLOC, "study", "create", str(config_path), "--storage", url], capture_output=True, text=True
    )
    if created.returncode != 0:
        raise RuntimeError(created.stderr)
    started = time.monotonic()
    driver = _Driver(url=url, name=name, log_file=workdir / f"{name}-workers.log")
    counts = {"kills": 0, "window": 0}
    try:
        driver.pool = [driver.spawn_worker() for _ in range(workers)]
        while counts["kills"] < kills and time.monotonic() - started < timeout_s:
            time.sleep(rng.uniform(*gap_s))
            driver.observe()
            if counts["kills"] % 2 == 1:  # every other kill lands inside the ask-to-heartbeat window
                driver.kill_inside_the_window()
                counts["window"] += 1
            elif not driver.kill_a_worker(rng):
                break
            counts["kills"] += 1
            log(f"{backend}: kill {counts['kills']}/{kills}, {len(driver.seen_complete)} trials seen complete")
        hangs = driver.wait_for_workers(started + timeout_s)
    finally:
        driver.kill_all()
    result = _check(driver, backend=backend, workers=workers, counts=counts, hangs=hangs, trials=trials)
    result = SoakResult(**{**asdict(result), "seconds": time.monotonic() - started})
    log(f"{backend}: {result.as_dict()}")
    return result


def _check(
    driver: _Driver, *, backend: str, workers: int, counts: dict[str, int], hangs: int, trials: int
) -> SoakResult:
    final = driver.observe()
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    lost = sum(
        1
        for number, value in driver.seen_complete.items()
        if not any(t.number == number and t.value == value for t in complete)
    )
    vectors = [np.asarray(attrs.evaluated_vector(t)) for t in complete]
    records, intact = _stored_calibrations(driver.url)
    return SoakResult(
        backend=backend,
        workers=workers,
        kills=counts["kills"],
        window_kills=counts["window"],
        hangs=hangs,
        trials_requested=trials,
        trials_finished=len(complete),
        finished_lost=lost,
        duplicates=len(vectors) - len({tuple(np.round(v, 12)) for v in vectors}),
        off_constraint=_off_constraint(vectors, Database(driver.url).study_config(driver.name)),
        failed_trials=sum(t.state == TrialState.FAIL for t in final),
        retried_trials=sum(1 for t in complete if attrs.retried_from(t) is not None),
        calibrations=records,
        calibration_intact=intact,
        seconds=0.0,
    )


def _stored_calibrations(url: str) -> tuple[int, bool]:
    """How many calibrations the database holds, and whether the only one is ready and loads."""
    with Session(Database(url).engine) as session:
        records = list(session.scalars(select(CalibrationRecord).where(CalibrationRecord.kind == "histograms")))
    if len(records) != 1 or records[0].status != "ready" or not records[0].blob:
        return len(records), False
    try:
        Calibration.from_bytes(records[0].blob)
    except Exception:
        return 1, False
    return 1, True


def _off_constraint(vectors: list[np.ndarray], config: dict[str, Any]) -> int:
    if not vectors:
        return 0
    weights = load_model(config["model"]).adapter.block_weights().numpy()
    target, upper = config["sparsity"]["target"], config["sparsity"]["upper"]
    return sum(
        1
        for v in vectors
        if abs(float(v @ weights) / weights.sum() - target) > 1e-6 or v.min() < -1e-12 or v.max() > upper + 1e-12
    )
