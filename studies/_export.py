"""Exporting a study's best trial as a lookup directory (lookup.json + TEAL-compatible files), atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from allocator import InputError, build_lookup, check_export_target, write_lookup, write_teal_files
from allocator import trial_attributes as attrs
from studies._manage import best_trial
from studies._runner import load_optuna_study
from studies._session import StudySession


@dataclass(frozen=True)
class ExportResult:
    path: Path
    trial_number: int
    calibration_perplexity: float
    heldout_perplexity: float
    achieved_sparsity: float
    teal_files: bool


def export_study(session: StudySession, out: str | Path) -> ExportResult:
    """Write the best trial's lookup to ``out`` (replacing an earlier export atomically) and record it.

    ``out`` must be new, empty or an earlier export (see :func:`allocator.check_export_target`).
    """
    check_export_target(out)
    config = session.config
    study = load_optuna_study(session)
    best = best_trial(study)
    if best is None:
        raise InputError(f"Study {config.name!r} has no finished trial to export yet; run it first.")
    vector = torch.tensor(attrs.evaluated_vector(best, session.space.dim), dtype=torch.float64)
    sparse_model = session.sparse_model
    site_sparsities = sparse_model.site_sparsities(vector)
    heldout = session.objective.heldout(vector)
    site_weights = session.loaded.adapter.site_weights()
    lookup = _lookup_document(session, best, vector, site_sparsities, heldout.perplexity)
    teal = session.score.kind == "magnitude"

    def extra(directory: Path) -> None:
        if teal:
            write_teal_files(
                directory, session.calibration, vector, site_sparsities, site_weights, greedy=session.greedy
            )

    path = write_lookup(out, lookup, extra=extra)
    session.database.record_export(
        study_name=config.name,
        trial_number=best.number,
        path=str(path),
        heldout_perplexity=heldout.perplexity,
        lookup=json.dumps(lookup),
    )
    return ExportResult(
        path=path,
        trial_number=best.number,
        calibration_perplexity=float(best.value),
        heldout_perplexity=heldout.perplexity,
        achieved_sparsity=lookup["achieved_sparsity"],
        teal_files=teal,
    )


def _lookup_document(
    session: StudySession,
    best: optuna.trial.FrozenTrial,
    vector: torch.Tensor,
    site_sparsities: torch.Tensor,
    heldout_perplexity: float,
) -> dict[str, Any]:
    """The lookup of ``best``'s allocation, with its calibration and study provenance."""
    config = session.config
    return build_lookup(
        model=session.loaded.identity(),
        score=session.score,
        sparsify_fraction=session.sparse_model.sparsify_fraction,
        split=config.sparsity.split,
        target=config.sparsity.target,
        block_sparsities=vector,
        site_sparsities=site_sparsities,
        thresholds=session.calibration.thresholds(site_sparsities),
        site_weights=session.loaded.adapter.site_weights(),
        calibration={
            **session.tokens.describe(),
            "key": session.calibration_key,
            "tokens": session.calibration.n_tokens,
            "greedy": session.greedy.settings if session.greedy is not None else None,
        },
        study={
            "name": config.name,
            "trial": best.number,
            "sampler": config.sampler.name,
            "objective": "calibration perplexity",
            "calibration_perplexity": best.value,
            "heldout_perplexity": heldout_perplexity,
            "measured_sparsity": attrs.measured_sparsity(best),
            "config": config.canonical(),
        },
    )
