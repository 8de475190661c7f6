"""PNG plots of a study, from the database alone: best-so-far perplexity, the best allocation across depth
against uniform, and measured sparsity against perplexity for every trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from allocator.samplers import evaluated_vector
from storage import Database
from studies._manage import load_study_config
from studies._runner import HELDOUT_ATTR, best_trial


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
    out.mkdir(parents=True, exist_ok=True)
    written = []

    figure, axis = plt.subplots(figsize=(7, 4))
    if complete:
        numbers = [t.number for t in complete]
        values = np.array([t.value for t in complete])
        axis.plot(numbers, values, "o", alpha=0.35, label="trial")
        axis.step(numbers, np.minimum.accumulate(values), where="post", label="best so far (calibration)")
        heldout = [(t.number, t.user_attrs[HELDOUT_ATTR]) for t in complete if HELDOUT_ATTR in t.user_attrs]
        if heldout:
            axis.plot(*zip(*heldout, strict=True), "s", label="held-out of a new best")
        axis.set_yscale("log")
    axis.set_xlabel("trial")
    axis.set_ylabel("perplexity")
    axis.set_title(f"{name}: {config.sampler.name}, target {config.sparsity.target:.0%}")
    axis.legend()
    figure.tight_layout()
    written.append(out / "best_so_far.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    best = best_trial(study)
    if best is not None:
        vector = evaluated_vector(best)
        blocks = np.arange(len(vector))
        axis.bar(blocks, vector, label=f"best trial {best.number} (ppl {best.value:.2f})")
        axis.axhline(config.sparsity.target, color="black", linestyle="--", label="uniform")
    axis.set_xlabel("block (depth)")
    axis.set_ylabel("sparsity")
    axis.set_title("best allocation across depth")
    axis.legend()
    figure.tight_layout()
    written.append(out / "best_allocation.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    points = [(t.user_attrs.get("measured_sparsity"), t.value) for t in complete]
    points = [(s, v) for s, v in points if s is not None]
    if points:
        axis.scatter(*zip(*points, strict=True), alpha=0.6)
        axis.set_yscale("log")
    axis.axvline(config.sparsity.target, color="black", linestyle="--", label="target (nominal)")
    axis.set_xlabel("measured model-level sparsity")
    axis.set_ylabel("calibration perplexity")
    axis.set_title("every trial")
    axis.legend()
    figure.tight_layout()
    written.append(out / "sparsity_vs_perplexity.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)
    return written
