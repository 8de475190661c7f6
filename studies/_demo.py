"""The demo: what ``make demo`` runs on the embedded SmolLM2 and the pydoc corpus, end to end.

A `bo` study (blend site split: half TEAL's greedy split, half uniform; the best variant in
``bench/results/allocators-parts/s4/``) at 50% model-level sparsity, its export, and the two baselines measured
the same way (thresholds calibrated under the sparse model, held-out text never used to choose): uniform
(every site at the target) and TEAL's greedy-uniform. Three studies share one database, so the calibration,
the greedy split tables and the dense references are computed once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from allocator import Evaluation
from allocator.paths import make_directory
from allocator.search import trial_attributes as attrs
from storage import Database
from studies._config import StudyConfig, build_config
from studies._export import ExportResult, Measured, export_candidates, export_study, exported_thresholds, measure
from studies._manage import create_study
from studies._report import write_report
from studies._runner import Reporter, RunResult, load_optuna_study, run_study
from studies._session import Notify, Progress, StudySession, open_session

DEMO_TRIALS = 30


def demo_config(trials: int | None = None, *, sampler: str = "bo") -> StudyConfig:
    """A study at 50% model-level sparsity, sized so the demo finishes inside 20 minutes on 2 CPU cores."""
    split = {"uniform": "uniform", "greedy": "greedy"}.get(sampler, "blend")
    return build_config(
        f"demo-{sampler}-blend-50" if split == "blend" else f"demo-{sampler}-50",
        target=0.5,
        model="smollm2-135m",
        data={"source": "pydoc", "seq_len": 256, "calibration_sequences": 8, "search_sequences": 48},
        sparsity={"lower": 0.0, "upper": 0.9, "split": split, "greedy": {"sequences": 2}},
        sampler=sampler,
        search={"screen_sequences": 4, "promote_sequences": [8]},
        trials=(trials or DEMO_TRIALS) if sampler == "bo" else 1,
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
    baselines: dict[str, Measured]  # held-out figures of uniform and greedy-uniform
    dense: Evaluation
    plots: list[Path]
    minutes: float

    def rows(self) -> list[tuple[str, Measured]]:
        """The demo's table, one labelled row per allocation: the two baselines, then bo's exported choice."""
        return [
            ("uniform", self.baselines["uniform"]),
            ("greedy-uniform (TEAL)", self.baselines["greedy"]),
            (f"bo, blend split (trial {self.exported.trial_number})", self.exported.heldout),
        ]

    def gain(self, baseline: str) -> float:
        """The share of ``baseline``'s held-out perplexity degradation over dense that bo removes, each at
        exactly the target sparsity."""
        dense, base = self.dense.perplexity, self.baselines[baseline].exact.perplexity
        return (base - self.exported.heldout.exact.perplexity) / (base - dense)


def _baseline(database: Database, sampler: str, notify: Notify, progress: Progress | None) -> Measured:
    """A one-trial baseline study, run and measured as an export measures its choice (held-out figures)."""
    config = demo_config(sampler=sampler)
    create_study(database, config)
    session = open_session(database, config, notify=notify, progress=progress)
    run_study(session)
    (trial,) = export_candidates(load_optuna_study(session), 1)
    vector = torch.tensor(attrs.evaluated_vector(trial, session.space.dim), dtype=torch.float64)
    _, thresholds = exported_thresholds(session, vector)
    return measure(session, vector, thresholds, "heldout")


def run_demo(
    out: Path,
    *,
    trials: int | None = None,
    notify: Notify = lambda message: None,
    progress: Progress | None = None,
    reporter: Reporter | None = None,
) -> DemoResult:
    """Create (or reuse) the demo studies in ``out``, run them, export bo's choice and measure the baselines."""
    started = time.perf_counter()
    make_directory(out, f"Cannot write the demo to {str(out)!r}")
    database = Database(f"sqlite:///{out / 'sparsealloc.db'}", create=True)
    config = demo_config(trials)
    create_study(database, config)
    session: StudySession = open_session(database, config, notify=notify, progress=progress)
    result = run_study(session, reporter=reporter)
    notify("Exporting the bo study's choice")
    exported = export_study(session, out / "lookup")
    notify("Measuring the baselines: uniform and greedy-uniform")
    baselines: dict[str, Any] = {name: _baseline(database, name, notify, progress) for name in ("uniform", "greedy")}
    dense = session.evaluate(0.0, "heldout", rule="threshold")
    plots = write_report(database, config.name, out / "report")
    return DemoResult(
        config=config,
        database=database,
        run=result,
        exported=exported,
        baselines=baselines,
        dense=dense,
        plots=plots,
        minutes=(time.perf_counter() - started) / 60,
    )
