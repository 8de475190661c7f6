"""The study runner: configuration (and :func:`build_config`, the one way code builds one), sessions, the run
loop, export, reports, the one-off measurements of ``apply``, ``evaluate`` and ``calibrate``, the command line
(which only parses, calls these and prints).

Public names are imported lazily (``from studies import run_study`` imports the runner, and with it the
samplers, only then), so ``sparsealloc --help``, ``study status`` and ``study list`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "DataConfig": "studies._config",
    "StudyConfig": "studies._config",
    "load_config": "studies._config",
    "parse_config": "studies._config",
    "build_config": "studies._config",
    "ArtifactStore": "studies._session",
    "MemoryArtifacts": "studies._session",
    "StudySession": "studies._session",
    "artifact_key": "studies._session",
    "build_spaces": "studies._session",
    "calibration_for": "studies._session",
    "greedy_table_for": "studies._session",
    "load_tokens": "studies._session",
    "open_session": "studies._session",
    "reference_for": "studies._session",
    "rung_indices": "studies._session",
    "stored_artifact": "studies._session",
    "Reporter": "studies._runner",
    "RunResult": "studies._runner",
    "SilentReporter": "studies._runner",
    "TrialObjective": "studies._runner",
    "count_states": "studies._runner",
    "load_optuna_study": "studies._runner",
    "make_sampler": "studies._runner",
    "budget_spent": "studies._runner",
    "repair_stale_trials": "studies._runner",
    "tokens_spent": "studies._runner",
    "run_study": "studies._runner",
    "target_trials": "studies._runner",
    "StudySummary": "studies._manage",
    "best_trial": "studies._manage",
    "check_study": "studies._manage",
    "create_study": "studies._manage",
    "delete_study": "studies._manage",
    "load_study_config": "studies._manage",
    "open_study": "studies._manage",
    "summarize": "studies._manage",
    "Candidate": "studies._export",
    "ExportResult": "studies._export",
    "ExportedPoint": "studies._export",
    "FrontierExportResult": "studies._export",
    "export_frontier": "studies._export",
    "export_point": "studies._export",
    "evaluate_candidate": "studies._export",
    "export_candidates": "studies._export",
    "candidate_trials": "studies._export",
    "best_candidate": "studies._export",
    "no_search_trials": "studies._export",
    "export_study": "studies._export",
    "exported_thresholds": "studies._export",
    "measure": "studies._export",
    "Measured": "studies._export",
    "frontier_series": "studies._report",
    "write_report": "studies._report",
    "AdhocSettings": "studies._adhoc",
    "AppliedLookup": "studies._adhoc",
    "UniformEvaluation": "studies._adhoc",
    "apply_lookup": "studies._adhoc",
    "check_calibration_target": "studies._adhoc",
    "evaluate_uniform": "studies._adhoc",
    "open_adhoc_session": "studies._adhoc",
    "save_calibration": "studies._adhoc",
    "LoggedProgress": "studies._progress",
    "study_progress": "studies._progress",
    "DemoResult": "studies._demo",
    "demo_config": "studies._demo",
    "run_demo": "studies._demo",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'studies' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
