"""The one door to Optuna's internals: every private attribute or module of Optuna that sparsealloc uses.

Optuna's public API has no way to write an attribute of a trial that is not the one being run (a
``FrozenTrial`` has no setter; ``Trial.set_system_attr`` is deprecated), to fail a trial other than one's own,
to reach a study's storage or id, or to read the heartbeat table. Samplers, the runner and the storage repair
need each of these, so they go through the functions here and nowhere else touches ``optuna._*`` or a
private attribute of an Optuna object (``tests/test_architecture.py`` checks it). The Optuna versions they
were written and tested for are :data:`OPTUNA_VERSIONS`, which ``pyproject.toml`` pins and a test checks
against the installed Optuna, so an upgrade that may break one of them is a deliberate step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial, TrialState

#: The Optuna releases this module's private accesses were written for (the dependency's range in pyproject).
OPTUNA_VERSIONS = ">=4.2,<6"


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` reads and writes (Optuna's own samplers reach it as ``study._storage``)."""
    return study._storage


def rdb_storage(study: optuna.Study) -> RDBStorage:
    """The RDB storage under ``study``, without the private caching layer Optuna wraps it in."""
    storage = study_storage(study)
    return getattr(storage, "_backend", storage)


def study_id(study: optuna.Study) -> int:
    """The id of ``study`` in its storage, for storage calls that take one."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The id of ``trial`` (running or frozen) in its storage, for storage calls that take one."""
    return trial._trial_id


def is_multi_objective(study: optuna.Study) -> bool:
    """Whether ``study`` has several objectives (samplers that optimise one refuse such a study)."""
    return study._is_multi_objective()


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """Write a system attribute of any trial of ``study``, frozen ones included, through its storage."""
    study_storage(study).set_trial_system_attr(trial_id(trial), key, value)


def set_trial_user_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """Write a user attribute of any trial of ``study`` through its storage (not only the trial being run)."""
    study_storage(study).set_trial_user_attr(trial_id(trial), key, value)


def trial_system_attrs(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> dict[str, Any]:
    """The system attributes of ``trial`` as stored now (a frozen copy may predate writes made since)."""
    return study_storage(study).get_trial_system_attrs(trial_id(trial))


def set_trial_state(study: optuna.Study, trial: optuna.Trial | FrozenTrial, state: TrialState) -> None:
    """Set the state of any trial of ``study`` (e.g. fail a trial that must not run), through its storage."""
    study_storage(study).set_trial_state_values(trial_id(trial), state=state)


def trial_tables() -> tuple[Any, Any]:
    """Optuna's SQLAlchemy models of the trial and trial-heartbeat tables, for queries its API cannot make."""
    from optuna.storages._rdb import models  # noqa: PLC2701 - the tables are Optuna's own; read only here

    return models.TrialModel, models.TrialHeartbeatModel


def stale_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """The ids of the study's RUNNING trials whose heartbeat is stale by Optuna's own test (database clock)."""
    return list(storage._get_stale_trial_ids(study_id))
