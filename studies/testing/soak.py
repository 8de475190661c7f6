"""The fault soak: workers on one study, killed with SIGKILL at random moments and replaced.

A study on a tiny model with a cheap objective runs with ``workers`` processes while the driver makes
``kills`` kills at random moments, alternating two kinds:

* a random worker is SIGKILLed (mid-trial, mid-proposal, mid-calibration: wherever it is) and replaced;
* a *window kill*: a process opens the study, creates its trial with ``study.ask()`` (the trial is RUNNING)
  and is SIGKILLed before its first heartbeat, which is exactly the state a worker killed between creating
  its trial and its first heartbeat leaves (Optuna alone would keep such a trial RUNNING forever).

The kills are spread over the first half of the study: kill ``i`` lands, after a random delay, while the
study has between ``m_i`` and ``m_(i+1)`` finished trials (:func:`kill_milestones`). They are synchronised
on the study's progress, not on the clock, so every kill is made before the study can finish however fast
or slow the machine is. Then the workers finish the study.

The checks: exactly the requested number of finished trials, no worker still running at the deadline (no
hang), no finished trial lost (every trial ever seen COMPLETE stays COMPLETE with the same value), no proposal
evaluated twice (the COMPLETE trials' vectors are distinct), every finished trial on the constraint, and the
stored calibration intact (one ready calibration that loads). Every process the soak starts is killed when it
ends, however it ends. Used by ``bench/soak.py`` and by a short test.
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
from allocator.search import trial_attributes as attrs
from storage import CalibrationRecord, Database
from studies import StudyConfig, build_config

SPARSEALLOC = str(Path(sys.executable).with_name("sparsealloc"))

# A process that does what a worker does up to its trial's creation, then dies before any heartbeat. It
# opens the study first, says so, and creates its trial when the driver writes a line to its stdin, so the
# kill lands at the moment the driver chose, not after the seconds an interpreter takes to import optuna.
_ASK_AND_DIE = """
import os, signal, sys
import optuna
from storage import Database
study = optuna.load_study(study_name=sys.argv[2], storage=Database(sys.argv[1], create=False).optuna_storage)
print("ready", flush=True)
sys.stdin.readline()
study.ask()
os.kill(os.getpid(), signal.SIGKILL)
"""
_POLL_S = 0.05


@dataclass(frozen=True)
class SoakResult:
    """What a soak counted, one field per check (see the module docstring), for the test's assertions and
    ``bench/soak.py``'s results."""

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
        """Whether every check passed: the requested trials finished, no hang, nothing lost or duplicated, and one
        intact calibration."""
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
        """The counts and the verdict as plain values, for a JSON results file."""
        return {**asdict(self), "ok": self.ok}


def soak_config(model_dir: Path, *, name: str, trials: int, sampler: str) -> StudyConfig:
    """A study configuration for the soak: the tiny model at ``model_dir`` with few short sequences, so that trials take
    a fraction of a second and the kills land in every phase of a worker."""
    return build_config(
        name,
        target=0.5,
        model=str(model_dir),
        data={
            "source": "pydoc",
            "seq_len": 32,
            "calibration_sequences": 4,
            "search_sequences": 12,
            "validation_sequences": 2,
            "heldout_sequences": 2,
        },
        sparsity={"lower": 0.0, "upper": 0.9},
        sampler=sampler,
        trials=trials,
        seed=0,
        search={"screen_sequences": 8, "promote_sequences": [4]},
        evaluation={"batch_size": 4, "heldout": "none"},
        source="soak",
    )


@dataclass
class _Driver:
    """The soak's processes and what it has seen."""

    url: str
    name: str
    log_file: Path
    pool: list[subprocess.Popen] = field(default_factory=list)
    others: list[subprocess.Popen] = field(default_factory=list)
    seen_complete: dict[int, float] = field(default_factory=dict)
    _progress: optuna.Study | None = None

    def spawn_worker(self) -> subprocess.Popen:
        return self._spawn([SPARSEALLOC, "worker", self.name, "--storage", self.url])

    def _spawn(self, command: list[str], *, piped: bool = False) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with self.log_file.open("a") as handle:
            return subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                stdout=subprocess.PIPE if piped else handle,
                stderr=handle if piped else subprocess.STDOUT,
                start_new_session=True,
            )

    def finished(self) -> int:
        """How many trials are COMPLETE now (one storage connection, reused by every poll)."""
        if self._progress is None:
            self._progress = optuna.load_study(study_name=self.name, storage=self.url)
        return len(self._progress.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def wait_for_finished(self, count: int, until: float) -> bool:
        """Poll until ``count`` trials are COMPLETE (True) or the clock reaches ``until`` (False)."""
        while self.finished() < count:
            if time.monotonic() >= until:
                return False
            time.sleep(_POLL_S)
        return True

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

    def arm_window_kill(self) -> subprocess.Popen:
        """Start the process of the next window kill and wait until it has opened the study; it then waits
        for :meth:`kill_inside_the_window`."""
        doomed = self._spawn([sys.executable, "-c", _ASK_AND_DIE, self.url, self.name], piped=True)
        self.others.append(doomed)
        assert doomed.stdout is not None
        if doomed.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the window-kill process could not open the study; see {self.log_file}")
        return doomed

    @staticmethod
    def kill_inside_the_window(doomed: subprocess.Popen) -> None:
        assert doomed.stdin is not None
        doomed.stdin.write(b"go\n")
        doomed.stdin.close()
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


def kill_milestones(trials: int, kills: int) -> list[int]:
    """Finished-trial counts ``m_0 … m_kills``: kill ``i`` lands while the study has between ``m_i`` and
    ``m_(i+1)`` finished trials. All lie in the study's first half, so the last kill comes while half the
    trials are still to run."""
    return [i * trials // (2 * kills) for i in range(kills + 1)]


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
    """Run one soak on ``url`` and check it; ``log`` receives progress lines.

    ``gap_s`` bounds the random delay of each kill after its milestone; the delay is cut short when the
    study reaches the next milestone.
    """
    rng = random.Random(seed)
    name = f"soak-{backend}"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yaml"
    config = soak_config(model_dir, name=name, trials=trials, sampler=sampler)
    config_path.write_text(yaml.safe_dump(config.canonical()))  # created through the command line, as a user would
    created = subprocess.run(
        [SPARSEALLOC, "study", "create", str(config_path), "--storage", url], capture_output=True, text=True
    )
    if created.returncode != 0:
        raise RuntimeError(created.stderr)
    started = time.monotonic()
    driver = _Driver(url=url, name=name, log_file=workdir / f"{name}-workers.log")
    counts = {"kills": 0, "window": 0}
    deadline = started + timeout_s
    milestones = kill_milestones(trials, kills)
    try:
        # Every other kill lands inside the ask-to-heartbeat window; those processes start before the
        # workers, so that their start-up costs the study no progress.
        doomed = {i: driver.arm_window_kill() for i in range(1, kills, 2)}
        driver.pool = [driver.spawn_worker() for _ in range(workers)]
        for i in range(kills):
            if not driver.wait_for_finished(milestones[i], deadline):
                break
            driver.wait_for_finished(milestones[i + 1], min(deadline, time.monotonic() + rng.uniform(*gap_s)))
            if i in doomed:
                driver.kill_inside_the_window(doomed[i])
                counts["window"] += 1
            elif not driver.kill_a_worker(rng):
                break
            counts["kills"] += 1
            driver.observe()
            log(f"{backend}: kill {counts['kills']}/{kills}, {len(driver.seen_complete)} trials seen complete")
        hangs = driver.wait_for_workers(deadline)
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
