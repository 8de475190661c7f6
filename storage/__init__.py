"""sparsealloc's storage: one URL (SQLite by default, or PostgreSQL) holding Optuna's trial storage and our tables.

Public API: :class:`Database` (the engine, our tables, Optuna's storage on the same URL), the URL helpers,
the lease primitives (:class:`ArtifactClaims`, :func:`database_now`), :class:`StorageError` and the
classification of database errors, the repair of orphaned trials (:func:`heartbeat_orphans`) and which running
trials are alive (:func:`live_running_trials`), and the wait for a study another process is creating
(:func:`wait_for_study`).
"""

from __future__ import annotations

from storage._clock import database_now
from storage._database import HEARTBEAT_GRACE_S, HEARTBEAT_INTERVAL_S, Database
from storage._errors import CONNECTION_ERRORS, StorageError, database_error, is_connection_error
from storage._leases import CLAIM_STALE_S, ArtifactClaims, owner_id
from storage._orphans import heartbeat_orphans, live_running_trials, unheartbeated_running_trials
from storage._tables import SCHEMA_VERSION, CalibrationRecord, Meta, ModelRecord
from storage._url import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, chosen_url, mask_url, redact, resolve_url
from storage._waiting import STUDY_POLL_S, study_created, wait_for_study

__all__ = [
    "CLAIM_STALE_S",
    "CONNECTION_ERRORS",
    "DEFAULT_URL",
    "HEARTBEAT_GRACE_S",
    "HEARTBEAT_INTERVAL_S",
    "SCHEMA_VERSION",
    "STUDY_POLL_S",
    "URL_ENVIRONMENT_VARIABLE",
    "ArtifactClaims",
    "CalibrationRecord",
    "Database",
    "Meta",
    "ModelRecord",
    "StorageError",
    "chosen_url",
    "database_error",
    "database_now",
    "heartbeat_orphans",
    "is_connection_error",
    "live_running_trials",
    "mask_url",
    "owner_id",
    "redact",
    "resolve_url",
    "study_created",
    "unheartbeated_running_trials",
    "wait_for_study",
]
