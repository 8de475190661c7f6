"""Exporting a study: choose a trial by validation, calibrate its thresholds under the sparse model, report
it on held-out text, and write its lookup (lookup.json + TEAL-compatible files) atomically.

Choosing: the candidates are the trials that reached the highest rung of the search (those with the most
search sequences behind them), best first, at most ``search.validation_candidates`` of them. Each is
evaluated on the validation tokens at exactly its target sparsity (the ``quantile`` rule), and the lowest
validation value (the study's objective) is exported. Its thresholds are then calibrated under the sparse
model on the calibration tokens (:func:`allocator.calibrate_allocation`): the thresholds inference uses.

Reporting, for the record only (nothing reported as held-out ever chooses anything): held-out (and
out-of-domain) KL and perplexity at exactly the target sparsity, which compare allocations free of how
well thresholds transfer between documents, and with the exported thresholds, with the sparsity they
really reach on each text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from allocator import (
    Calibration,
    Evaluation,
    InputError,
    build_lookup,
    calibrate_allocation,
    check_export_target,
    write_lookup,
    write_teal_files,
)
from allocator import trial_attributes as attrs
from allocator.integrations.nncf import write_nncf_file
from studies._runner import load_optuna_study
from studies._session import StudySession

#: How many search-pool sequences the export measures its thresholds' sparsity on.
_SEARCH_MEASURE_SEQUENCES = 64


@dataclass(frozen=True)
class Candidate:
    """One trial considered for export, with its validation evaluation (at exactly its target sparsity)."""

    trial: optuna.trial.FrozenTrial
    vector: torch.Tensor
    validation: Evaluation


@dataclass(frozen=True)
class Measured:
    """An allocation's figures on one text: at exactly the target sparsity, and with the exported thresholds."""

    exact: Evaluation
    thresholds: Evaluation

    def as_dict(self) -> dict[str, Any]:
        return {"exact": _figures(self.exact), "with_thresholds": _figures(self.thresholds)}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    trial_number: int
    candidates: int
    search_value: float
    validation: Evaluation
    heldout: Measured
    ood: Measured | None
    search_measured_sparsity: float  # with the exported thresholds, on the search pool
    achieved_sparsity: float
    teal_files: bool

    @property
    def heldout_perplexity(self) -> float:
        return self.heldout.thresholds.perplexity


def export_candidates(study: optuna.Study, count: int) -> list[optuna.trial.FrozenTrial]:
    """The trials that reached the highest rung, best (lowest value there) first, at most ``count``."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return []

    def rungs(trial: optuna.trial.FrozenTrial) -> list[float]:
        return attrs.rung_values(trial) or [float(trial.value)]

    top = max(len(rungs(t)) for t in complete)
    reached = [t for t in complete if len(rungs(t)) == top]
    return sorted(reached, key=lambda t: (rungs(t)[-1], t.number))[:count]


def evaluate_candidate(session: StudySession, trial: optuna.trial.FrozenTrial) -> Candidate:
    """``trial``'s allocation on the validation tokens, at exactly its target sparsity."""
    vector = torch.tensor(attrs.evaluated_vector(trial, session.space.dim), dtype=torch.float64)
    return Candidate(trial, vector, session.evaluate(vector, "validation", rule="quantile"))


def exported_thresholds(session: StudySession, vector: torch.Tensor) -> tuple[Calibration, torch.Tensor]:
    """The calibration of ``vector`` under the sparse model on the calibration tokens, and its thresholds."""
    calibration = calibrate_allocation(
        session.sparse_model, vector, session.tokens.calibration, batch_size=session.config.evaluation.batch_size
    )
    return calibration, calibration.thresholds(session.sparse_model.site_sparsities(vector))


def measure(session: StudySession, vector: torch.Tensor, thresholds: torch.Tensor, role: str) -> Measured:
    """``vector`` on a role's tokens: at exactly its target sparsity, and with ``thresholds``."""
    return Measured(
        exact=session.evaluate(vector, role, rule="quantile"),
        thresholds=session.evaluate(vector, role, rule="threshold", thresholds=thresholds),
    )


def export_study(session: StudySession, out: str | Path) -> ExportResult:
    """Choose a trial by validation, calibrate its thresholds, write its lookup to ``out``, record it.

    ``out`` must be new, empty or an earlier export (see :func:`allocator.check_export_target`); an earlier
    export is replaced atomically.
    """
    check_export_target(out)
    config = session.config
    trials = export_candidates(load_optuna_study(session), config.search.validation_candidates)
    if not trials:
        raise InputError(f"Study {config.name!r} has no finished trial to export yet; run it first.")
    session.notify(f"Choosing among {len(trials)} candidate(s) by validation {config.search.objective}")
    candidates = [evaluate_candidate(session, trial) for trial in trials]
    best = min(candidates, key=lambda c: (c.validation.value(config.search.objective), c.trial.number))
    session.notify(f"Calibrating the thresholds of trial {best.trial.number} under the sparse model")
    calibration, thresholds = exported_thresholds(session, best.vector)
    report = {
        role: measure(session, best.vector, thresholds, role)
        for role in ("heldout", "ood")
        if role in session.tokens.sets
    }
    pool = session.rungs_order()[:_SEARCH_MEASURE_SEQUENCES]
    search = session.evaluate(best.vector, "search", index=pool, rule="threshold", thresholds=thresholds)
    lookup = _lookup_document(session, best, thresholds, calibration, report, search, len(candidates))
    site_sparsities = session.sparse_model.site_sparsities(best.vector)
    teal = session.score.kind == "magnitude"

    def extra(directory: Path) -> None:
        if teal:
            site_weights = session.loaded.adapter.site_weights()
            write_teal_files(directory, calibration, best.vector, site_sparsities, site_weights, session.greedy)
        write_nncf_file(directory, lookup)

    path = write_lookup(out, lookup, extra=extra)
    session.database.record_export(
        study_name=config.name,
        trial_number=best.trial.number,
        path=str(path),
        heldout_perplexity=report["heldout"].thresholds.perplexity,
        lookup=json.dumps(lookup),
    )
    return ExportResult(
        path=path,
        trial_number=best.trial.number,
        candidates=len(candidates),
        search_value=float(best.trial.value),
        validation=best.validation,
        heldout=report["heldout"],
        ood=report.get("ood"),
        search_measured_sparsity=search.measured_sparsity,
        achieved_sparsity=lookup["achieved_sparsity"],
        teal_files=teal,
    )


def _figures(evaluation: Evaluation) -> dict[str, Any]:
    return {"kl": evaluation.kl, "perplexity": evaluation.perplexity, "measured_sparsity": evaluation.measured_sparsity}


def _lookup_document(
    session: StudySession,
    best: Candidate,
    thresholds: torch.Tensor,
    calibration: Calibration,
    report: dict[str, Measured],
    search: Evaluation,
    candidates: int,
) -> dict[str, Any]:
    """The lookup of the chosen allocation, with its calibration and study provenance."""
    config = session.config
    return build_lookup(
        model=session.loaded.identity(),
        score=session.score,
        sparsify_fraction=session.sparse_model.sparsify_fraction,
        split=config.sparsity.split,
        target=config.sparsity.target,
        block_sparsities=best.vector,
        site_sparsities=session.sparse_model.site_sparsities(best.vector),
        thresholds=thresholds,
        site_weights=session.loaded.adapter.site_weights(),
        calibration={
            **session.tokens.describe(),
            "key": session.calibration_key,
            "tokens": calibration.n_tokens,
            "thresholds": "calibrated under the sparse model at this allocation, block by block",
            "greedy": session.greedy.settings if session.greedy is not None else None,
        },
        study={
            "name": config.name,
            "trial": best.trial.number,
            "sampler": config.sampler.name,
            "objective": config.search.objective,
            "search_value": best.trial.value,
            "candidates": candidates,
            "chosen_by": f"validation {config.search.objective}",
            "validation": _figures(best.validation),
            "search_with_thresholds": _figures(search),
            **{role: measured.as_dict() for role, measured in report.items()},
            "heldout_perplexity": report["heldout"].thresholds.perplexity,
            "measured_sparsity": search.measured_sparsity,
            "config": config.canonical(),
        },
    )
