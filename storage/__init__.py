"""sparsealloc's storage: one URL (SQLite by default, or PostgreSQL) holding Optuna's trial storage and our tables."""

from __future__ import annotations

from storage._database import CONNECTION_ERRORS, Database, is_connection_error
from storage._tables import SCHEMA_VERSION
from storage._url import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, mask_url, resolve_url

__all__ = [
    "CONNECTION_ERRORS",
    "DEFAULT_URL",
    "SCHEMA_VERSION",
    "URL_ENVIRONMENT_VARIABLE",
    "Database",
    "is_connection_error",
    "mask_url",
    "resolve_url",
]
