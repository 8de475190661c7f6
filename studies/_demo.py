"""The demo study: what ``make demo`` runs on the embedded SmolLM2 and the pydoc corpus, end to end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from allocator import Evaluation
from storage import Database
from studies._config import StudyConfig, parse_config
from studies._export import ExportResult, export_study
from studies._manage import create_study
from studies._report import write_report
from studies._runner import Reporter, RunResult, run_study
from studies._session import Notify, Progress, open_session

DEMO_TRIALS = 30


def demo_config(trials: int | None = None) -> StudyConfig:
    """A `bo` study at 50% model-level sparsity, sized to finish well inside 20 minutes on 2 CPU cores."""
    return parse_config(
        {
            "name": "demo-bo-50",
            "model": "smollm2-135m",
            "data": {"calibration": "pydoc", "seq_len": 256, "calibration_sequences": 8, "heldout_sequences": 16},
            "sparsity": {"target": 0.5, "lower": 0.0, "upper": 0.9},
            "sampler": {"name": "bo"},
            "trials": trials or DEMO_TRIALS,
            "seed": 0,
        },
        source="demo",
    )


@dataclass(frozen=True)
class DemoResult:
    """What the demo found, for the command line to print."""

    config: StudyConfig
    database: Database
    run: RunResult
    exported: ExportResult
    dense: Evaluation
    uniform_heldout: Evaluation
    uniform_search: Evaluation
    plots: list[Path]
    minutes: float


def run_demo(
    out: Path,
    *,
    trials: int | None = None,
    notify: Notify = lambda message: None,
    progress: Progress | None = None,
    reporter: Reporter | None = None,
) -> DemoResult:
    """Create (or reuse) the demo study in ``out``, run it, export its best trial and compare with uniform."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    database = Database(f"sqlite:///{out / 'sparsealloc.db'}", create=True)
    config = demo_config(trials)
    create_study(database, config)
    session = open_session(database, config, notify=notify, progress=progress)
    result = run_study(session, reporter=reporter)
    notify("Exporting the best trial and measuring uniform sparsity on held-out data")
    exported = export_study(session, out / "lookup")
    target = config.sparsity.target
    uniform_heldout = session.objective.heldout(target)
    dense = session.objective.heldout(0.0)
    uniform_search = session.objective(target)
    plots = write_report(database, config.name, out / "report")
    return DemoResult(
        config=config,
        database=database,
        run=result,
        exported=exported,
        dense=dense,
        uniform_heldout=uniform_heldout,
        uniform_search=uniform_search,
        plots=plots,
        minutes=(time.perf_counter() - started) / 60,
    )
