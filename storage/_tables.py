"""Our own tables, beside Optuna's in the same database: what Optuna's trial storage does not hold.

- ``sparsealloc_meta``: the schema version, checked on every open.
- ``sparsealloc_models``: a model's identity and site weights, by fingerprint.
- ``sparsealloc_studies``: each study's validated configuration (workers rebuild everything from it).
- ``sparsealloc_calibrations``: calibration artifacts (score histograms, greedy split tables), keyed by
  model fingerprint + data hash + settings, computed once by whichever worker claims them first.
- ``sparsealloc_exports``: every lookup exported from a study.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Float, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 2


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC: the default of every ``created_at`` column, whatever the machine's
    zone."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """The declarative base of our tables, so that their metadata creates them apart from Optuna's."""

    pass


class Meta(Base):
    """``sparsealloc_meta``: key-value rows, among them the schema version every open checks."""

    __tablename__ = "sparsealloc_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class ModelRecord(Base):
    """``sparsealloc_models``: a model's identity and site weights by fingerprint, so that stored results name the model
    they came from."""

    __tablename__ = "sparsealloc_models"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    source: Mapped[str] = mapped_column(Text)
    architecture: Mapped[str] = mapped_column(String(64))
    n_blocks: Mapped[int] = mapped_column(Integer)
    site_weights: Mapped[str] = mapped_column(Text)  # JSON: n_blocks x 7 weight counts
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class StudyRecord(Base):
    """``sparsealloc_studies``: a study's canonical configuration and its hash, from which every worker rebuilds the
    study."""

    __tablename__ = "sparsealloc_studies"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    config: Mapped[str] = mapped_column(Text)  # canonical JSON of the validated configuration
    config_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class CalibrationRecord(Base):
    """``sparsealloc_calibrations``: one calibration artifact (histograms or a greedy table), claimed by the worker
    computing it and ready once its blob is stored."""

    __tablename__ = "sparsealloc_calibrations"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "histograms" | "greedy"
    model_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    settings: Mapped[str] = mapped_column(Text)  # JSON
    status: Mapped[str] = mapped_column(String(16))  # "computing" | "ready"
    owner: Mapped[str] = mapped_column(String(256))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class ExportRecord(Base):
    """``sparsealloc_exports``: one lookup exported from a study, with the trial it came from and its held-out
    perplexity."""

    __tablename__ = "sparsealloc_exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    heldout_perplexity: Mapped[float | None] = mapped_column(Float, nullable=True)
    lookup: Mapped[str] = mapped_column(Text)  # the exported lookup.json
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
