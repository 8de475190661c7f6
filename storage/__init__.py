"""sparsealloc's storage: one URL (SQLite by default, or PostgreSQL) holding Optuna's trial storage and our tables.

Public API: :class:`Database` (the engine, our tables, Optuna's storage on the same URL), the URL helpers,
the lease primitives (:class:`ArtifactClaims`, :func:`database_now`), the classification of database errors,
the repair of orphaned trials (:func:`heartbeat_orphans`) and which running trials are alive
(:func:`live_running_trials`).
"""

from __future__ import annotations

from storage._clock import database_now
from storage._database import HEARTBEAT_GRACE_S, HEARTBEAT_INTERVAL_S, Database
from storage._errors import CONNECTION_ERRORS, database_error, is_connection_error
from storage._leases import CLAIM_STALE_S, ArtifactClaims, owner_id
from storage._orphans import heartbeat_orphans, live_running_trials, rdb_storage, unheartbeated_running_trials
from storage._tables import SCHEMA_VERSION, CalibrationRecord, Meta, ModelRecord
from storage._url import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, chosen_url, mask_url, redact, resolve_url

__all__ = [
    "CLAIM_STALE_S",
    "CONNECTION_ERRORS",
    "DEFAULT_URL",
    "HEARTBEAT_GRACE_S",
    "HEARTBEAT_INTERVAL_S",
    "SCHEMA_VERSION",
    "URL_ENVIRONMENT_VARIABLE",
    "ArtifactClaims",
    "CalibrationRecord",
    "Database",
    "Meta",
    "ModelRecord",
    "chosen_url",
    "database_error",
    "database_now",
    "heartbeat_orphans",
    "is_connection_error",
    "live_running_trials",
    "mask_url",
    "owner_id",
    "rdb_storage",
    "redact",
    "resolve_url",
    "unheartbeated_running_trials",
]
