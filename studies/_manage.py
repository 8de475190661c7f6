"""Creating, checking, deleting and summarising studies from the database alone (no model is loaded)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from allocator import ConstraintSpace, check_text_source, model_shape, resolve_placement
from allocator.errors import DataSourceError, InputError, ModelSourceError
from allocator.search import study_id
from allocator.search import trial_attributes as attrs
from storage import Database, StorageError, live_running_trials, wait_for_study
from studies._config import NO_SEARCH_NAMES, StudyConfig, parse_config


def check_study(config: StudyConfig) -> int:
    """Check what can be checked without loading weights; returns the model's number of blocks.

    The model source must be a supported causal LM taking ``data.seq_len`` positions, every data source
    (``source``, ``heldout``, ``ood``) must read as text (opened, decoded and parsed as a run reads it), and
    the per-block bounds must have one value per block and reach the target. Every supported architecture
    has decoder blocks of equal size, so the block weights of the model-level average are equal and the
    reachable range is checked exactly here; the first worker checks it again with the weights it reads.
    """
    resolve_placement(config.model.device, config.model.dtype)  # a device this machine lacks is refused here
    try:
        shape = model_shape(config.model.source)
    except ModelSourceError as error:
        raise ModelSourceError(f"`model`: {error}") from None
    shape.check_seq_len(config.data.seq_len, name="data.seq_len")
    n_blocks = shape.n_blocks
    data = config.data
    for key, source in (("source", data.source), ("heldout", data.heldout), ("ood", data.ood)):
        if source is not None:
            try:
                check_text_source(source, text_field=data.text_field)
            except DataSourceError as error:
                raise DataSourceError(f"`data.{key}`: {error}") from None
    sparsity = config.sparsity
    try:
        for target in sparsity.targets:
            ConstraintSpace(weights=[1.0] * n_blocks, target=target, lower=sparsity.lower, upper=sparsity.upper)
    except InputError as error:
        raise type(error)(f"`sparsity` of study {config.name!r}: {error}") from None
    return n_blocks


def create_study(database: Database, config: StudyConfig, *, checked: bool = False) -> bool:
    """Check ``config`` and register it as a study; True if created, False if it exists with this configuration.

    ``checked``: the caller has already run :func:`check_study` on ``config`` (the CLI does, before it opens the
    database), so its data sources are not read a second time.

    A name that exists with a different configuration is refused (the database keeps the first). A configuration
    stored by an older sparsealloc, which lacks settings added since, is the same configuration when it reads as
    this one with those settings at their defaults: upgrading does not stop a study from being resumed.
    """
    if not checked:
        check_study(config)
    try:
        created = database.register_study(config.name, config.canonical(), config.digest())
    except StorageError:
        if load_study_config(database, config.name).canonical() != config.canonical():
            raise
        created = False
    study = optuna.create_study(
        study_name=config.name, storage=database.optuna_storage, direction="minimize", load_if_exists=True
    )
    study.set_metric_names([config.search.objective])
    return created


def delete_study(database: Database, name: str, *, force: bool = False) -> int:
    """Delete study ``name``: its trials (Optuna's storage) and our records of it; returns the trial count.

    Calibrations are shared by every study of the same model and tokens, so they stay. A study with trials
    running under a live heartbeat is refused unless ``force``: some process is evaluating them, and deleting
    the study under it ends that process (in one sentence) and throws away its work.
    """
    database.study_config(name)  # one sentence if there is no such study
    trials = 0
    try:
        study = optuna.load_study(study_name=name, storage=database.optuna_storage)
        alive = live_running_trials(database.optuna_storage, study_id(study))
        if alive and not force:
            numbers = ", ".join(str(number) for number in alive)
            raise StorageError(
                f"Study {name!r} has trial(s) {numbers} running in another process (a live heartbeat); stop that "
                "process (Ctrl-C or SIGTERM re-enqueues its trial) and delete again, or give --force to delete "
                "the study anyway (that process then stops)."
            )
        trials = len(study.get_trials(deepcopy=False))
        optuna.delete_study(study_name=name, storage=database.optuna_storage)
    except KeyError:  # registered by us but never created in Optuna's tables (an interrupted create)
        pass
    database.forget_study(name)
    return trials


def best_trial(study: optuna.Study, target: float | None = None) -> optuna.trial.FrozenTrial | None:
    """The COMPLETE trial with the lowest finite value (of ``target``'s trials, if given), or None.

    Values of different targets never compare: a frontier study has a best trial per target.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return _lowest(complete if target is None else attrs.trials_at(complete, target))


def _lowest(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The trial with the lowest finite value, or None."""
    finite = [t for t in trials if t.value is not None and math.isfinite(t.value)]
    return min(finite, key=lambda t: t.value) if finite else None


def load_study_config(database: Database, name: str) -> StudyConfig:
    """The configuration study ``name`` was created with, as stored in ``database``: what every worker and command of
    the study uses."""
    return parse_config(database.study_config(name), source=f"study {name!r}", stored=True)


def open_study(name: str, url: str | None = None, *, wait_s: float = 0.0) -> tuple[Database, StudyConfig]:
    """The database at ``url`` and the configuration of study ``name``, once ``study create`` has created it
    there, waiting up to ``wait_s`` seconds for another process to do so (:func:`storage.wait_for_study`):
    what ``study run``, ``study resume`` and ``worker`` open before loading the model."""
    database = wait_for_study(url, name, wait_s=wait_s)
    return database, load_study_config(database, name)


@dataclass(frozen=True)
class TargetBest:
    """A frontier study's best trial at one of its targets."""

    target: float
    complete: int
    trial: int | None
    value: float | None
    heldout_perplexity: float | None
    measured_sparsity: float | None


@dataclass(frozen=True)
class NoSearchBest:
    """The best trial that needs no search (a start point, or the uniform vector under a fixed split): the yardstick
    of the search's own gain."""

    name: str
    trial: int
    value: float


def no_search_best(complete: list[optuna.trial.FrozenTrial], split: str) -> NoSearchBest | None:
    """The lowest-valued of the ``complete`` trials that need no search: the start points of a study that searches
    the split, else the uniform vector (named after the study's fixed ``split``)."""
    fixed = NO_SEARCH_NAMES.get(split)
    named = []
    for trial in complete:
        name = attrs.no_search_name(trial)
        if name is None and fixed is not None and attrs.is_uniform(attrs.evaluated_vector(trial)):
            name = fixed
        if name is not None and trial.value is not None:
            named.append((float(trial.value), trial.number, name))
    if not named:
        return None
    value, number, name = min(named)
    return NoSearchBest(name=name, trial=number, value=value)


@dataclass(frozen=True)
class StudySummary:
    """What ``study status`` and ``study list`` show. For a frontier study (several targets) the ``best_*``
    fields are None (values of different targets never compare) and ``frontier`` holds the best per target."""

    name: str
    sampler: str
    split: str
    objective: str
    targets: tuple[float, ...]
    trials: int
    complete: int
    running: int
    waiting: int
    failed: int
    pruned: int
    best_trial: int | None
    best_value: float | None
    best_kl: float | None
    best_perplexity: float | None
    best_heldout_perplexity: float | None
    best_measured_sparsity: float | None
    best_vector: tuple[float, ...] | None
    frontier: tuple[TargetBest, ...] = ()
    best_share: float | None = None  # the best trial's share of the greedy split (a split-searching study)
    no_search: NoSearchBest | None = None  # the best no-search allocation among the trials (single target)

    @property
    def search_gain(self) -> float | None:
        """How much lower the best trial's search value is than the best no-search allocation's, as a share of the
        latter (0 when a no-search allocation is the best); None without both."""
        if self.no_search is None or self.best_value is None or self.no_search.value == 0:
            return None
        return 1.0 - self.best_value / self.no_search.value

    @property
    def target_label(self) -> str:
        """``0.500``, or ``0.40-0.70 (4)`` for a frontier study."""
        if len(self.targets) == 1:
            return f"{self.targets[0]:.3f}"
        return f"{self.targets[0]:.2f}-{self.targets[-1]:.2f} ({len(self.targets)})"

    def vector_summary(self) -> str:
        """The best vector in one line (min, mean and max, first and last block), or ``-`` without one."""
        if not self.best_vector:
            return "-"
        v = np.asarray(self.best_vector)
        return f"min {v.min():.3f} / mean {v.mean():.3f} / max {v.max():.3f} (first {v[0]:.3f}, last {v[-1]:.3f})"


def summarize(database: Database, name: str) -> StudySummary:
    """The state of study ``name`` as ``study status`` and ``study list`` show it: trial counts by state, and the best
    trial (of each target, for a frontier study)."""
    config = load_study_config(database, name)
    study = optuna.load_study(study_name=name, storage=database.optuna_storage)
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(1 for t in trials if t.state == state) for state in TrialState}
    targets = config.sparsity.targets
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = _lowest(complete) if len(targets) == 1 else None
    vector = attrs.evaluated_vector(best) if best is not None else None
    return StudySummary(
        name=name,
        sampler=config.sampler.name,
        split=config.sparsity.split,
        objective=config.search.objective,
        targets=targets,
        trials=config.trials,
        complete=count[TrialState.COMPLETE],
        running=count[TrialState.RUNNING],
        waiting=count[TrialState.WAITING],
        failed=count[TrialState.FAIL],
        pruned=sum(1 for t in trials if t.state == TrialState.PRUNED and not attrs.is_surplus(t)),
        best_trial=best.number if best is not None else None,
        best_value=best.value if best is not None else None,
        best_kl=attrs.kl(best) if best is not None else None,
        best_perplexity=attrs.perplexity(best) if best is not None else None,
        best_heldout_perplexity=attrs.heldout_perplexity(best) if best is not None else None,
        best_measured_sparsity=attrs.measured_sparsity(best) if best is not None else None,
        best_vector=tuple(float(x) for x in vector) if vector is not None else None,
        frontier=tuple(_target_best(complete, target) for target in targets) if len(targets) > 1 else (),
        best_share=attrs.trial_split(best) if best is not None else None,
        no_search=no_search_best(complete, config.sparsity.split) if len(targets) == 1 else None,
    )


def _target_best(complete: list[optuna.trial.FrozenTrial], target: float) -> TargetBest:
    """The best of the study's COMPLETE trials ``complete`` at ``target``."""
    mine = attrs.trials_at(complete, target)
    best = _lowest(mine)
    return TargetBest(
        target=target,
        complete=len(mine),
        trial=None if best is None else best.number,
        value=None if best is None else best.value,
        heldout_perplexity=None if best is None else attrs.heldout_perplexity(best),
        measured_sparsity=None if best is None else attrs.measured_sparsity(best),
    )
