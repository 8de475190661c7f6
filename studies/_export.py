"""Exporting a study: choose a trial by validation, calibrate its thresholds under the sparse model, report
it on held-out text, and write its lookup (lookup.json + TEAL-compatible files) atomically.

Choosing: the candidates are the trials that reached the highest rung of the search (those with the most
search sequences behind them), best first, at most ``search.validation_candidates`` of them, and every
allocation among the trials that needs no search (the start points of a study that searches the split; the
uniform vector under a fixed split), so the export is never worse on validation than what a user gets without
the search. Each is evaluated on the validation tokens at exactly its target sparsity (the ``quantile``
rule), and the lowest validation value (the study's objective) is exported; the best no-search candidate is
recorded beside it, the yardstick of the search's own gain. Its thresholds are then calibrated under the sparse
model on the calibration tokens (:func:`allocator.calibrate_allocation`): the thresholds inference uses.

Reporting, for the record only (nothing reported as held-out ever chooses anything): held-out (and
out-of-domain) KL and perplexity at exactly the target sparsity, which compare allocations free of how
well thresholds transfer between documents, and with the exported thresholds, with the sparsity they
really reach on each text.

A frontier study (several targets) is exported as one directory holding the frontier
(:func:`export_frontier`): each target is chosen, calibrated and measured exactly as above, among that
target's own trials, and written as a complete single-target lookup in its own subdirectory
(``target-0.40/``), whose ``lookup.json`` also holds every site's quantile table of thresholds (what
interpolating between targets needs); a top-level ``lookup.json`` (``sparsealloc.frontier/v1``) indexes the
points, and top-level TEAL files hold one results.csv row per point (see
:func:`allocator.write_teal_frontier_files`). The database records one export: the point at the middle
target (the lower of the two middle ones for an even count), its trial and held-out perplexity, with the
index as the lookup.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from allocator import (
    QUANTILE_LEVELS,
    Calibration,
    Evaluation,
    InputError,
    OutputError,
    atomic_write_directory,
    build_frontier_index,
    build_lookup,
    calibrate_allocation,
    check_export_target,
    point_directory,
    write_lookup,
    write_lookup_file,
    write_teal_files,
    write_teal_frontier_files,
)
from allocator.integrations.nncf import write_nncf_file
from allocator.search import trial_attributes as attrs
from studies._config import NO_SEARCH_NAMES
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
    share: float | None = None  # its share of the greedy split (a study that searches the split), else None
    no_search: str | None = None  # the name of the no-search allocation it is (``uniform``...), else None


@dataclass(frozen=True)
class Measured:
    """An allocation's figures on one text: at exactly the target sparsity, and with the exported thresholds."""

    exact: Evaluation
    thresholds: Evaluation

    def as_dict(self) -> dict[str, Any]:
        """Both sets of figures as plain values, for the report an exported lookup file carries."""
        return {"exact": _figures(self.exact), "with_thresholds": _figures(self.thresholds)}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and measured: the lookup directory, the chosen trial, and its figures on each text, for the
    command line and the database's export record."""

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
    target: float
    share: float | None = None  # the chosen allocation's share of the greedy split (a split-searching study)
    chosen_no_search: str | None = None  # the name of the no-search allocation chosen, if the search found no better
    no_search: Candidate | None = None  # the best no-search candidate by validation, the search's yardstick

    @property
    def heldout_perplexity(self) -> float:
        """The held-out perplexity with the exported thresholds: the figure a user of the lookup gets, and the one
        recorded with the export."""
        return self.heldout.thresholds.perplexity


@dataclass(frozen=True)
class FrontierExportResult:
    """A frontier export: its directory and one result per point (increasing targets; each ``path`` is the
    point's subdirectory). ``recorded`` is the position of the point the database records."""

    path: Path
    points: tuple[ExportResult, ...]
    recorded: int


@dataclass(frozen=True)
class ExportedPoint:
    """One target's chosen allocation: its calibration under the sparse model, figures and lookup document."""

    best: Candidate
    candidates: int
    no_search: Candidate | None  # the best no-search candidate by validation (None: the study has none)
    calibration: Calibration | None  # dropped (None) once a frontier point's files are written
    report: dict[str, Measured]
    search: Evaluation
    lookup: dict[str, Any]
    site_sparsities: torch.Tensor

    def result(self, path: Path, teal: bool) -> ExportResult:
        """The point's :class:`ExportResult` once its files are in ``path`` (``teal``: whether TEAL's files were written
        too)."""
        return ExportResult(
            path=path,
            trial_number=self.best.trial.number,
            candidates=self.candidates,
            search_value=float(self.best.trial.value),
            validation=self.best.validation,
            heldout=self.report["heldout"],
            ood=self.report.get("ood"),
            search_measured_sparsity=self.search.measured_sparsity,
            achieved_sparsity=self.lookup["achieved_sparsity"],
            teal_files=teal,
            target=float(self.lookup["target_sparsity"]),
            share=self.best.share,
            chosen_no_search=self.best.no_search,
            no_search=self.no_search,
        )


def export_candidates(study: optuna.Study, count: int, target: float | None = None) -> list[optuna.trial.FrozenTrial]:
    """The trials that reached the highest rung, best (lowest value there) first, at most ``count``.

    ``target`` (a frontier study's) keeps only the trials of that target, and the highest rung is the
    highest its trials reached; None keeps every trial (a single-target study).
    """
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if target is not None:
        complete = attrs.trials_at(complete, target)
    if not complete:
        return []

    def rungs(trial: optuna.trial.FrozenTrial) -> list[float]:
        return attrs.rung_values(trial) or [float(trial.value)]

    top = max(len(rungs(t)) for t in complete)
    reached = [t for t in complete if len(rungs(t)) == top]
    return sorted(reached, key=lambda t: (rungs(t)[-1], t.number))[:count]


def candidate_trials(
    session: StudySession, study: optuna.Study, target: float | None = None
) -> list[optuna.trial.FrozenTrial]:
    """What an export compares on validation: the best trials of the highest rung (:func:`export_candidates`) and
    every no-search allocation among the trials (:func:`no_search_trials`), so an export is never worse on
    validation than the allocations that need no search."""
    target = session.config.sparsity.targets[0] if target is None else target
    frontier = session.config.sparsity.is_frontier
    best = export_candidates(study, session.config.search.validation_candidates, target if frontier else None)
    numbers = {t.number for t in best}
    return best + [t for t in no_search_trials(session, study, target) if t.number not in numbers]


def no_search_trials(session: StudySession, study: optuna.Study, target: float) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of ``target`` that are allocations needing no search: the start points of a study that
    searches the split, or the uniform vector under the study's own split (e.g. ``bo``'s first trial)."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    complete = attrs.trials_at(complete, target, session.config.sparsity.targets)
    if session.config.sparsity.split == "search":
        return [t for t in complete if attrs.no_search_name(t) is not None]
    uniform = session.space_for(target).uniform_vector()
    found = [t for t in complete if _is_vector(attrs.evaluated_vector(t, session.space.dim), uniform)]
    return found[:1]


def _is_vector(vector: Any, expected: Any) -> bool:
    return vector is not None and bool(abs(vector - expected).max() <= 1e-9)


def no_search_name(session: StudySession, trial: optuna.trial.FrozenTrial) -> str | None:
    """The name of the no-search allocation ``trial`` is: its start point's, or the uniform vector under the study's
    fixed split (``uniform``, TEAL's ``greedy-uniform``, ``blend-uniform``); None for a searched trial."""
    name = attrs.no_search_name(trial)
    if name is not None or session.config.sparsity.split == "search":
        return name
    target = attrs.target_of(trial, session.config.sparsity.targets)
    if target is None or not _is_vector(attrs.evaluated_vector(trial), session.space_for(target).uniform_vector()):
        return None
    return NO_SEARCH_NAMES[session.config.sparsity.split]


def evaluate_candidate(session: StudySession, trial: optuna.trial.FrozenTrial) -> Candidate:
    """``trial``'s allocation on the validation tokens, at exactly its target sparsity (at its share of the greedy
    split, in a study that searches the split)."""
    vector = torch.tensor(attrs.evaluated_vector(trial, session.space.dim), dtype=torch.float64)
    share = attrs.trial_split(trial)
    validation = session.evaluate(vector, "validation", rule="quantile", share=share)
    return Candidate(trial, vector, validation, share, no_search_name(session, trial))


def exported_thresholds(
    session: StudySession, vector: torch.Tensor, share: float | None = None
) -> tuple[Calibration, torch.Tensor]:
    """The calibration of ``vector`` under the sparse model on the calibration tokens, and its thresholds."""
    sparse_model = session.sparse_model_for(share)
    calibration = calibrate_allocation(
        sparse_model, vector, session.tokens.calibration, batch_size=session.config.evaluation.batch_size
    )
    return calibration, calibration.thresholds(sparse_model.site_sparsities(vector))


def measure(
    session: StudySession, vector: torch.Tensor, thresholds: torch.Tensor, role: str, share: float | None = None
) -> Measured:
    """``vector`` on a role's tokens: at exactly its target sparsity, and with ``thresholds``."""
    return Measured(
        exact=session.evaluate(vector, role, rule="quantile", share=share),
        thresholds=session.evaluate(vector, role, rule="threshold", thresholds=thresholds, share=share),
    )


def export_point(
    session: StudySession, trials: list[optuna.trial.FrozenTrial], target: float, *, frontier: bool = False
) -> ExportedPoint:
    """Choose among ``trials`` (one target's candidates) by validation, calibrate the choice's thresholds
    under the sparse model, measure it, and build its lookup (with quantile tables for a frontier point)."""
    config = session.config
    label = f"Target {target:g}: " if frontier else ""
    roles = [role for role in ("heldout", "ood") if role in session.tokens.sets]
    # one step per candidate, the calibration, each role's measurement and the search pool's
    done = _export_steps(session, f"{label}Export", len(trials) + len(roles) + 2)
    session.notify(f"{label}Choosing among {len(trials)} candidate(s) by validation {config.search.objective}")
    candidates = [done(evaluate_candidate(session, trial)) for trial in trials]
    best = best_candidate(candidates, config.search.objective)
    best_no_search = best_candidate([c for c in candidates if c.no_search is not None], config.search.objective)
    session.notify(f"{label}Calibrating the thresholds of trial {best.trial.number} under the sparse model")
    calibration, thresholds = done(exported_thresholds(session, best.vector, best.share))
    report = {role: done(measure(session, best.vector, thresholds, role, best.share)) for role in roles}
    pool = session.rungs_order()[:_SEARCH_MEASURE_SEQUENCES]
    search = done(
        session.evaluate(best.vector, "search", index=pool, rule="threshold", thresholds=thresholds, share=best.share)
    )
    table = calibration.threshold_table(QUANTILE_LEVELS) if frontier else None
    lookup = _lookup_document(
        session, best, best_no_search, thresholds, calibration, report, search, len(candidates), target, table
    )
    site_sparsities = session.sparse_model_for(best.share).site_sparsities(best.vector)
    return ExportedPoint(best, len(candidates), best_no_search, calibration, report, search, lookup, site_sparsities)


def best_candidate(candidates: list[Candidate], objective: str) -> Any:
    """The candidate with the lowest validation value (the lower trial number on a tie); None among none."""
    return min(candidates, key=lambda c: (c.validation.value(objective), c.trial.number), default=None)


def _export_steps(session: StudySession, label: str, steps: int) -> Callable[[Any], Any]:
    """``done(result)``: counts one finished export step on the session's progress display, passes ``result``."""
    advance = session.progress(label, steps) if session.progress is not None else None

    def done(result: Any) -> Any:
        if advance is not None:
            advance(1)
        return result

    return done


def _write_point_files(session: StudySession, directory: Path, point: ExportedPoint) -> None:
    """A point's TEAL files (magnitude score) and nncf.json, beside its lookup.json."""
    if session.score.kind == "magnitude":
        site_weights = session.loaded.adapter.site_weights()
        write_teal_files(
            directory, point.calibration, point.best.vector, point.site_sparsities, site_weights, session.greedy
        )
    write_nncf_file(directory, point.lookup)


def export_study(session: StudySession, out: str | Path) -> ExportResult | FrontierExportResult:
    """Choose a trial by validation, calibrate its thresholds, write its lookup to ``out``, record it.

    A frontier study's export is :func:`export_frontier`'s. ``out`` must be new, empty or an earlier export
    (see :func:`allocator.check_export_target`); an earlier export is replaced atomically.
    """
    check_export_target(out)
    config = session.config
    if config.sparsity.is_frontier:
        return export_frontier(session, out)
    trials = candidate_trials(session, load_optuna_study(session))
    if not trials:
        raise InputError(f"Study {config.name!r} has no finished trial to export yet; run it first.")
    point = export_point(session, trials, config.sparsity.targets[0])
    path = write_lookup(out, point.lookup, extra=lambda directory: _write_point_files(session, directory, point))
    session.database.record_export(
        study_name=config.name,
        trial_number=point.best.trial.number,
        path=str(path),
        heldout_perplexity=point.report["heldout"].thresholds.perplexity,
        lookup=json.dumps(point.lookup),
    )
    return point.result(path, session.score.kind == "magnitude")


def export_frontier(session: StudySession, out: str | Path) -> FrontierExportResult:
    """Export every target of a frontier study into one directory ``out``, atomically (module docstring).

    Every target needs a finished trial; the points are chosen, calibrated and written one at a time (each
    point's calibration is dropped once its files are written, but the middle one's, for the TEAL files).
    """
    target_dir = check_export_target(out)
    config = session.config
    study = load_optuna_study(session)
    chosen = {target: candidate_trials(session, study, target) for target in config.sparsity.targets}
    missing = [f"{target:g}" for target, trials in chosen.items() if not trials]
    if missing:
        raise InputError(
            f"Study {config.name!r} has no finished trial at target(s) {', '.join(missing)} to export yet; "
            "run it further."
        )
    middle = (len(chosen) - 1) // 2
    points: list[ExportedPoint] = []
    teal = session.score.kind == "magnitude"

    def fill(staging: Path) -> None:
        for position, (target, trials) in enumerate(chosen.items()):
            point = export_point(session, trials, target, frontier=True)
            directory = staging / point_directory(target)
            directory.mkdir()
            write_lookup_file(directory, point.lookup)
            _write_point_files(session, directory, point)
            points.append(point if position == middle else dataclasses.replace(point, calibration=None))
        if teal:
            site_weights = session.loaded.adapter.site_weights()
            sites = [point.site_sparsities for point in points]
            write_teal_frontier_files(staging, points[middle].calibration, sites, site_weights)
        write_lookup_file(staging, _frontier_index(session, points, teal, middle))

    try:
        atomic_write_directory(target_dir, fill)
    except OSError as error:
        raise OutputError(f"Cannot write the export to {str(target_dir)!r}: {error.strerror or error}.") from error
    recorded = points[middle]
    session.database.record_export(
        study_name=config.name,
        trial_number=recorded.best.trial.number,
        path=str(target_dir),
        heldout_perplexity=recorded.report["heldout"].thresholds.perplexity,
        lookup=(target_dir / "lookup.json").read_text(encoding="utf-8"),
    )
    results = tuple(
        point.result(target_dir / point_directory(point.lookup["target_sparsity"]), teal) for point in points
    )
    return FrontierExportResult(path=target_dir, points=results, recorded=middle)


def _frontier_index(session: StudySession, points: list[ExportedPoint], teal: bool, middle: int) -> dict[str, Any]:
    """The top-level ``lookup.json`` of a frontier export."""
    config = session.config
    entries = [
        {
            "target": point.lookup["target_sparsity"],
            "directory": point_directory(point.lookup["target_sparsity"]),
            "achieved_sparsity": point.lookup["achieved_sparsity"],
            "trial": point.best.trial.number,
            "validation": _figures(point.best.validation),
            **{role: measured.as_dict() for role, measured in point.report.items()},
            "search_with_thresholds": _figures(point.search),
        }
        for point in points
    ]
    first = points[0].lookup
    teal_note = (
        f"top-level histograms from {entries[middle]['directory']}; results.csv rows: one per point" if teal else None
    )
    details = {key: first[key] for key in ("score", "sparsify_fraction", "split")}
    return build_frontier_index(
        points=entries,
        model=session.loaded.identity(),
        details={**details, "teal": teal_note},
        study={
            "name": config.name,
            "sampler": config.sampler.name,
            "objective": config.search.objective,
            "chosen_by": f"validation {config.search.objective}, among each target's own trials",
            "recorded_point": entries[middle]["directory"],
            "config": config.canonical(),
        },
    )


def _candidate_summary(candidate: Candidate) -> dict[str, Any]:
    """A candidate's name, trial, share and validation figures, as the lookup's provenance records them."""
    return {
        "name": candidate.no_search,
        "trial": candidate.trial.number,
        "split_share": candidate.share,
        "validation": _figures(candidate.validation),
    }


def _figures(evaluation: Evaluation) -> dict[str, Any]:
    return {"kl": evaluation.kl, "perplexity": evaluation.perplexity, "measured_sparsity": evaluation.measured_sparsity}


def _lookup_document(
    session: StudySession,
    best: Candidate,
    no_search: Candidate | None,
    thresholds: torch.Tensor,
    calibration: Calibration,
    report: dict[str, Measured],
    search: Evaluation,
    candidates: int,
    target: float,
    quantiles: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The lookup of the chosen allocation, with its calibration and study provenance (and, for a frontier
    point, ``quantiles``: every site's thresholds at :data:`allocator.QUANTILE_LEVELS`)."""
    config = session.config
    return build_lookup(
        model=session.loaded.identity(),
        score=session.score,
        sparsify_fraction=session.sparse_model.sparsify_fraction,
        split=config.sparsity.split,
        target=target,
        block_sparsities=best.vector,
        site_sparsities=session.sparse_model_for(best.share).site_sparsities(best.vector),
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
            "split_share": best.share,
            "no_search": best.no_search,
            "best_no_search": None if no_search is None else _candidate_summary(no_search),
            "search_with_thresholds": _figures(search),
            **{role: measured.as_dict() for role, measured in report.items()},
            "heldout_perplexity": report["heldout"].thresholds.perplexity,
            "measured_sparsity": search.measured_sparsity,
            "config": config.canonical(),
        },
        quantile_levels=QUANTILE_LEVELS if quantiles is not None else None,
        quantiles=quantiles,
    )
