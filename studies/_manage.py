"""Creating studies and summarising them from the database alone (no model is loaded for a status)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from allocator._data import check_text_source
from allocator._models import check_model_source
from allocator.samplers import evaluated_vector
from storage import Database
from studies._config import StudyConfig, parse_config
from studies._runner import HELDOUT_ATTR, SURPLUS_ATTR, best_trial


def create_study(database: Database, config: StudyConfig) -> bool:
    """Register ``config`` as a study; True if created, False if it already exists with this configuration.

    A name that exists with a different configuration is refused (the database keeps the first).
    """
    # Refuse a model or data source that cannot work now, not when the first worker starts.
    check_model_source(config.model)
    for source in (config.data.calibration, config.data.heldout):
        if source is not None:
            check_text_source(source)
    created = database.register_study(config.name, config.canonical(), config.digest())
    study = optuna.create_study(
        study_name=config.name, storage=database.optuna_storage, direction="minimize", load_if_exists=True
    )
    study.set_metric_names(["perplexity"])
    return created


def load_study_config(database: Database, name: str) -> StudyConfig:
    return parse_config(database.study_config(name), source=f"study {name!r}")


@dataclass(frozen=True)
class StudySummary:
    """What ``study status`` and ``study list`` show."""

    name: str
    sampler: str
    split: str
    target_sparsity: float
    trials: int
    complete: int
    running: int
    waiting: int
    failed: int
    pruned: int
    best_trial: int | None
    best_perplexity: float | None
    best_heldout_perplexity: float | None
    best_vector: tuple[float, ...] | None

    def vector_summary(self) -> str:
        if not self.best_vector:
            return "-"
        v = np.asarray(self.best_vector)
        return f"min {v.min():.3f} / mean {v.mean():.3f} / max {v.max():.3f} (first {v[0]:.3f}, last {v[-1]:.3f})"


def summarize(database: Database, name: str) -> StudySummary:
    config = load_study_config(database, name)
    study = optuna.load_study(study_name=name, storage=database.optuna_storage)
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(1 for t in trials if t.state == state) for state in TrialState}
    best = best_trial(study)
    heldout = best.user_attrs.get(HELDOUT_ATTR) if best is not None else None
    vector = evaluated_vector(best) if best is not None else None
    return StudySummary(
        name=name,
        sampler=config.sampler.name,
        split=config.sparsity.split,
        target_sparsity=config.sparsity.target,
        trials=config.trials,
        complete=count[TrialState.COMPLETE],
        running=count[TrialState.RUNNING],
        waiting=count[TrialState.WAITING],
        failed=count[TrialState.FAIL],
        pruned=sum(1 for t in trials if t.state == TrialState.PRUNED and not t.user_attrs.get(SURPLUS_ATTR)),
        best_trial=best.number if best is not None else None,
        best_perplexity=best.value if best is not None else None,
        best_heldout_perplexity=float(heldout) if heldout is not None and math.isfinite(heldout) else None,
        best_vector=tuple(float(x) for x in vector) if vector is not None else None,
    )
