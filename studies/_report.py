"""PNG plots of a study, from the database alone: best-so-far perplexity, the best allocation across depth
against uniform, and measured sparsity against perplexity for every trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from allocator import trial_attributes as attrs
from allocator.errors import OutputError
from storage import Database
from studies._manage import best_trial, load_study_config


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
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _write_plots(plt, config, study, complete, out)
    except OSError as error:
        raise OutputError(f"Cannot write the report to {str(out)!r}: {error.strerror or error}.") from error


def _write_plots(plt: Any, config: Any, study: optuna.Study, complete: list[Any], out: Path) -> list[Path]:
    written = []
    for plot, filename in (
        (_best_so_far, "best_so_far.png"),
        (_best_allocation, "best_allocation.png"),
        (_sparsity_vs_objective, "sparsity_vs_objective.png"),
    ):
        figure, axis = plt.subplots(figsize=(7, 4))
        plot(axis, config, study, complete)
        axis.legend()
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
    axis.set_title(f"{config.name}: {config.sampler.name}, target {config.sparsity.target:.0%}")


def _best_allocation(axis: Any, config: Any, study: optuna.Study, complete: list[Any]) -> None:
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
    axis.axvline(config.sparsity.target, color="black", linestyle="--", label="target")
    axis.set_xlabel("measured model-level sparsity (search screen)")
    axis.set_ylabel(f"search {config.search.objective}")
    axis.set_title("every trial")
