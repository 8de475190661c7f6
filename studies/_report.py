"""PNG plots of a study, from the database alone: best-so-far perplexity, the best allocation across depth
against uniform, and measured sparsity against perplexity for every trial.

A frontier study (several targets) also gets ``frontier.png``: held-out perplexity and held-out KL against
measured sparsity (the trial's ``measured_sparsity`` on its search screen: at exactly its target under the
``quantile`` rule) of each target's best trial among those whose held-out figures the runner recorded (it
records them for each new best trial of a target; best: most rungs reached, then lowest value at the last).
As baselines it draws, per target, the trials whose evaluated vector is uniform across blocks (``uniform``;
TEAL's ``greedy-uniform`` under the greedy split; ``blend-uniform`` under the blend split) where the database
holds their held-out figures; it computes nothing (no model is loaded), so a baseline the study never
evaluated, or evaluated without held-out figures, is missing from the plot.
Its best allocation plot draws each target's best trial.

The plots go into one directory, written atomically with a ``report.json`` that marks it as a report: an
earlier report is replaced, a folder holding other files is refused (:func:`check_report_target`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from allocator import atomic_write_directory
from allocator.errors import InputError, OutputError
from allocator.paths import OutputKind, check_output_directory, path_problem
from allocator.search import trial_attributes as attrs
from storage import Database
from studies._config import NO_SEARCH_NAMES
from studies._manage import best_trial, load_study_config

#: What a report directory holds: its plots and ``report.json``, the marker that tells an earlier report
#: (replaced) from a folder of other files (refused).
REPORT_FILE = "report.json"
REPORT_FORMAT = "sparsealloc.report/v1"
REPORT = OutputKind(
    noun="report",
    marker=REPORT_FILE,
    formats=("sparsealloc.report/",),
    entries=frozenset(
        {REPORT_FILE, "best_so_far.png", "best_allocation.png", "sparsity_vs_objective.png", "frontier.png"}
    ),
)


def write_report(database: Database, name: str, out: str | Path) -> list[Path]:
    """Write the study's plots into ``out``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = load_study_config(database, name)
    study = optuna.load_study(study_name=name, storage=database.optuna_storage)
    complete = sorted(
        (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None),
        key=lambda t: t.number,
    )
    if not complete:  # three empty plots would say nothing; refused before `out` is touched
        raise InputError(f"Study {name!r} has no finished trial to report yet; run it first.")
    target = check_report_target(out)
    written: list[str] = []

    def fill(staging: Path) -> None:
        written.extend(path.name for path in _write_plots(plt, config, study, complete, staging))
        marker = {"format": REPORT_FORMAT, "study": name, "plots": written}
        (staging / REPORT_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    try:
        atomic_write_directory(target, fill)
    except OSError as error:
        raise OutputError(f"Cannot write the report to {str(target)!r}: {path_problem(error)}.") from error
    return [Path(out) / filename for filename in written]


def check_report_target(out: str | Path) -> Path:
    """The absolute report directory, if it may be written: new, empty, or an earlier report.

    A report replaces its directory atomically, as an export does, and by the same rule
    (:func:`allocator.paths.check_output_directory`): a folder holding anything but an earlier report (a
    user's own ``best_so_far.png``, say; a report is recognised by its ``report.json``) is refused rather
    than overwritten, and so are the working directory or one of its parents and a place this user may not
    write.
    """
    return check_output_directory(out, REPORT)


def _write_plots(plt: Any, config: Any, study: optuna.Study, complete: list[Any], out: Path) -> list[Path]:
    written = []
    plots = [
        (_best_so_far, "best_so_far.png"),
        (_best_allocation, "best_allocation.png"),
        (_sparsity_vs_objective, "sparsity_vs_objective.png"),
    ]
    if config.sparsity.is_frontier:
        written.append(_frontier(plt, config, complete, out / "frontier.png"))
    for plot, filename in plots:
        figure, axis = plt.subplots(figsize=(7, 4))
        plot(axis, config, study, complete)
        _legend(axis)
        figure.tight_layout()
        written.append(out / filename)
        figure.savefig(written[-1], dpi=120)
        plt.close(figure)
    return written


def _best_so_far(axis: Any, config: Any, study: optuna.Study, complete: list[Any]) -> None:
    if complete:
        numbers = [t.number for t in complete]
        values = np.array([t.value for t in complete])
        axis.plot(numbers, values, "o", alpha=0.35, label="trial")
        label = f"best so far (search {config.search.objective})"
        axis.step(numbers, np.minimum.accumulate(values), where="post", label=label)
        read = attrs.heldout_perplexity if config.search.objective == "perplexity" else attrs.heldout_kl
        heldout = [(t.number, read(t)) for t in complete if read(t)]
        if heldout:
            axis.plot(*zip(*heldout, strict=True), "s", label="held-out of a new best (reported only)")
        axis.set_yscale("log")
    axis.set_xlabel("trial")
    axis.set_ylabel(config.search.objective)
    axis.set_title(f"{config.name}: {config.sampler.name}, {_targets_label(config)}")


def _targets_label(config: Any) -> str:
    targets = config.sparsity.targets
    if len(targets) == 1:
        return f"target {targets[0]:.0%}"
    return f"{len(targets)} targets {targets[0]:.0%}-{targets[-1]:.0%}"


def _best_of(trials: list[Any]) -> Any:
    """The trial that reached the most rungs, lowest value at its last rung first; None if there is none."""

    def rungs(trial: Any) -> list[float]:
        return attrs.rung_values(trial) or [float(trial.value)]

    return min(trials, key=lambda t: (-len(rungs(t)), rungs(t)[-1], t.number), default=None)


def _best_allocation(axis: Any, config: Any, study: optuna.Study, complete: list[Any]) -> None:
    if config.sparsity.is_frontier:
        for target in config.sparsity.targets:
            best = _best_of(attrs.trials_at(complete, target, config.sparsity.targets))
            vector = attrs.evaluated_vector(best) if best is not None else None
            if vector is not None:
                line = axis.plot(np.arange(len(vector)), vector, "o-", label=f"{target:.0%}: trial {best.number}")
                axis.axhline(target, color=line[0].get_color(), linestyle="--", alpha=0.5)
    else:
        best = best_trial(study)
        if best is not None:
            vector = attrs.evaluated_vector(best)
            blocks = np.arange(len(vector))
            axis.bar(blocks, vector, label=f"best trial {best.number} ({config.search.objective} {best.value:.4g})")
            axis.axhline(config.sparsity.target, color="black", linestyle="--", label="uniform")
    axis.set_xlabel("block (depth)")
    axis.set_ylabel("sparsity")
    axis.set_title("best allocation across depth")


def _sparsity_vs_objective(axis: Any, config: Any, study: optuna.Study, complete: list[Any]) -> None:
    points = [(attrs.measured_sparsity(t), t.value) for t in complete]
    points = [(s, v) for s, v in points if s is not None]
    if points:
        axis.scatter(*zip(*points, strict=True), alpha=0.6)
        axis.set_yscale("log")
    for position, target in enumerate(config.sparsity.targets):
        axis.axvline(target, color="black", linestyle="--", label="target" if position == 0 else None)
    axis.set_xlabel("measured model-level sparsity (search screen)")
    axis.set_ylabel(f"search {config.search.objective}")
    axis.set_title("every trial")


def frontier_series(config: Any, complete: list[Any]) -> dict[str, list[tuple[float, float, float]]]:
    """What ``frontier.png`` draws: per series (the best trial of each target, and the uniform allocation),
    ``(measured sparsity, held-out perplexity, held-out KL)`` per target, for trials that record all three."""
    baseline = NO_SEARCH_NAMES.get(config.sparsity.split, "best no-search")
    series: dict[str, list[tuple[float, float, float]]] = {"best trial per target": [], baseline: []}
    for target in config.sparsity.targets:
        trials = [t for t in attrs.trials_at(complete, target, config.sparsity.targets) if _heldout(t) is not None]
        uniform = [t for t in trials if attrs.is_uniform(attrs.evaluated_vector(t))]
        for label, chosen in (("best trial per target", _best_of(trials)), (baseline, _best_of(uniform))):
            if chosen is not None:
                series[label].append(_heldout(chosen))
    return series


def _frontier(plt: Any, config: Any, complete: list[Any], path: Path) -> Path:
    """``frontier.png``: held-out perplexity and KL against measured sparsity (see the module docstring)."""
    series = frontier_series(config, complete)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, column, name in ((axes[0], 1, "held-out perplexity"), (axes[1], 2, "held-out KL")):
        for (label, points), style in zip(series.items(), ("o-", "s--"), strict=True):
            if points:
                ordered = sorted(points)
                axis.plot([p[0] for p in ordered], [p[column] for p in ordered], style, label=label)
        axis.set_xlabel("measured model-level sparsity (search screen)")
        axis.set_ylabel(name)
        axis.set_title(f"{config.name}: {name} across the frontier")
        _legend(axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _legend(axis: Any) -> None:
    """The axis's legend, if anything on it has a label (matplotlib warns of an empty legend otherwise)."""
    if axis.get_legend_handles_labels()[0]:
        axis.legend()


def _heldout(trial: Any) -> tuple[float, float, float] | None:
    """``(measured sparsity, held-out perplexity, held-out KL)`` of a trial that records all three."""
    figures = (attrs.measured_sparsity(trial), attrs.heldout_perplexity(trial), attrs.heldout_kl(trial))
    return None if any(value is None for value in figures) else figures
