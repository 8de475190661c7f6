"""The demo: what ``make demo`` runs on the embedded SmolLM2 and the pydoc corpus, end to end.

A `bo` study at 50% model-level sparsity that searches the site split too (``sparsity.split: search``): its
first trials are the allocations that need no search, the uniform vector split uniformly (``uniform``), by
TEAL's greedy split (``greedy-uniform``) and half-and-half (``blend-uniform``); then bo searches. The export
chooses on validation data among the search's best and those no-search allocations, and the demo measures
every one of them on held-out text the way the export measures its choice (thresholds calibrated under the
sparse model; held-out text never chooses anything), so it shows the search's own gain over the best
allocation a user gets without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from allocator import Evaluation
from allocator.paths import make_directory
from allocator.search import trial_attributes as attrs
from storage import Database
from studies._config import StudyConfig, build_config
from studies._export import ExportResult, Measured, export_study, exported_thresholds, measure, no_search_trials
from studies._manage import create_study
from studies._report import write_report
from studies._runner import Reporter, RunResult, load_optuna_study, run_study
from studies._session import Notify, Progress, StudySession, open_session

DEMO_TRIALS = 16


def demo_config(trials: int | None = None) -> StudyConfig:
    """The demo's study: ``bo`` at 50% model-level sparsity, searching the site split too, sized so the demo
    finishes in minutes on 2 CPU cores (the same code paths as a full study, on fewer tokens)."""
    return build_config(
        "demo-bo-search-50-128",
        target=0.5,
        model="smollm2-135m",
        # Sequences of 128 tokens and small role sizes: the whole demo within minutes on 2 CPU cores.
        data={
            "source": "pydoc",
            "seq_len": 128,
            "calibration_sequences": 8,
            "search_sequences": 32,
            "validation_sequences": 8,
            "heldout_sequences": 16,
        },
        # TEAL's step (0.05) on one sequence: the greedy tables in under a minute (their cost is the tokens x steps)
        sparsity={"lower": 0.0, "upper": 0.9, "split": "search", "greedy": {"sequences": 1, "step": 0.05}},
        sampler={"name": "bo", "options": {"n_initial": 6}},
        search={"screen_sequences": 4, "promote_sequences": [8], "validation_candidates": 2},
        trials=trials or DEMO_TRIALS,
        seed=0,
        source="demo",
    )


@dataclass(frozen=True)
class DemoResult:
    """What the demo found, for the command line to print."""

    config: StudyConfig
    database: Database
    run: RunResult
    exported: ExportResult
    baselines: dict[str, Measured]  # held-out figures of every no-search start point, by name
    dense: Evaluation
    plots: list[Path]
    minutes: float

    def rows(self) -> list[tuple[str, Measured]]:
        """The demo's table, one labelled row per allocation: the no-search allocations, then bo's exported choice."""
        chosen = self.exported.chosen_no_search
        label = f"bo (trial {self.exported.trial_number})" + (f" = {chosen}" if chosen else "")
        return [*self.baselines.items(), (label, self.exported.heldout)]

    @property
    def best_no_search(self) -> str | None:
        """The no-search allocation the export judged best on validation data: the search's yardstick."""
        return None if self.exported.no_search is None else self.exported.no_search.no_search

    def gain(self, baseline: str) -> float:
        """The share of ``baseline``'s held-out perplexity degradation over dense that bo's export removes, each at
        exactly the target sparsity."""
        dense, base = self.dense.perplexity, self.baselines[baseline].exact.perplexity
        return (base - self.exported.heldout.exact.perplexity) / (base - dense)


def _no_search_baselines(session: StudySession, notify: Notify) -> dict[str, Measured]:
    """Every no-search start point of the study, measured on held-out text as an export measures its choice
    (thresholds calibrated under the sparse model), in the order of their shares."""
    study = load_optuna_study(session)
    starts = sorted(no_search_trials(session, study, session.config.sparsity.targets[0]), key=attrs.trial_split)
    measured = {}
    for trial in starts:
        name, share = attrs.no_search_name(trial), attrs.trial_split(trial)
        notify(f"Measuring the no-search allocation {name} on held-out text")
        vector = torch.tensor(attrs.evaluated_vector(trial, session.space.dim), dtype=torch.float64)
        _, thresholds = exported_thresholds(session, vector, share)
        measured[str(name)] = measure(session, vector, thresholds, "heldout", share)
    return measured


def run_demo(
    out: Path,
    *,
    trials: int | None = None,
    config: StudyConfig | None = None,
    notify: Notify = lambda message: None,
    progress: Progress | None = None,
    reporter: Reporter | None = None,
) -> DemoResult:
    """Create (or reuse) the demo study in ``out``, run it, export bo's choice and measure the no-search allocations.

    ``config`` replaces :func:`demo_config` (a smaller model for tests); it must search the split."""
    started = time.perf_counter()
    make_directory(out, f"Cannot write the demo to {str(out)!r}")
    database = Database(f"sqlite:///{out / 'sparsealloc.db'}", create=True)
    config = config or demo_config(trials)
    create_study(database, config)
    session: StudySession = open_session(database, config, notify=notify, progress=progress)
    result = run_study(session, reporter=reporter)
    notify("Exporting the bo study's choice")
    exported = export_study(session, out / "lookup")
    baselines = _no_search_baselines(session, notify)
    dense = session.evaluate(0.0, "heldout", rule="threshold")
    plots = write_report(database, config.name, out / "report")
    return DemoResult(
        config=config,
        database=database,
        run=result,
        exported=exported,  # type: ignore[arg-type]
        baselines=baselines,
        dense=dense,
        plots=plots,
        minutes=(time.perf_counter() - started) / 60,
    )
