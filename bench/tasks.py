"""Downstream-task accuracy of a study's allocations with lm-evaluation-harness, as the WAS reference measures.

For a study that searches the split (``sparsity.split: search``; the demo's is one), every allocation needing no
search (its start points: uniform, blend-uniform, TEAL's greedy-uniform) and the export's choice are exported
the way ``study export`` exports (thresholds calibrated under the sparse model) and run through
:func:`allocator.integrations.lm_eval.evaluate_tasks`, beside the dense model, on the same items.

The tasks: with a GPU and the hub, the WAS reference's list (``--tasks piqa,arc_easy,...``). Offline (this
machine has no dataset hub) the default is a local zero-shot task built here from text the study never read
(a pydoc study's roles hold no parliamentary speech): **parlspeech-continuation**, 4-way multiple choice, a
48-word passage of a UK House of Commons speech and its true next 16 words against three 16-word spans of other
speeches (the model's log-likelihood picks one; chance is 25%). It measures whether sparsity hurts the model's
grasp of text, not world knowledge: a stand-in for the WAS list, named so.

Run: ``python bench/tasks.py --storage sqlite:///demo-out/sparsealloc.db --study demo-bo-search-50-128``
(minutes per allocation on 2 CPU cores). Writes ``tasks.{json,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

if str(Path(__file__).parents[1]) not in sys.path:  # run as ``python bench/tasks.py``: the root, for bench/
    sys.path.insert(0, str(Path(__file__).parents[1]))


from allocator import load_text, write_lookup
from allocator.integrations.lm_eval import evaluate_tasks, prepare_tasks
from allocator.search import trial_attributes as attrs
from allocator.testing.local_tasks import write_multiple_choice_task
from bench._common import RESULTS, environment, write_results
from storage import Database
from studies import candidate_trials, export_point, load_optuna_study, load_study_config, no_search_trials, open_session

TASK = "parlspeech_continuation"


def write_continuation_task(directory: Path, documents: list[str], items: int, *, seed: int = 0) -> Path:
    """The local 4-way continuation task (module docstring) as lm-eval's JSONL and YAML in ``directory``."""
    rng = random.Random(seed)
    words = [doc.split() for doc in documents if len(doc.split()) >= 80]
    docs = []
    for _ in range(items):
        own = rng.randrange(len(words))
        start = rng.randrange(len(words[own]) - 64)
        context = " ".join(words[own][start : start + 48])
        answer = " ".join(words[own][start + 48 : start + 64])
        others = [d for d in rng.sample(range(len(words)), 4) if d != own][:3]
        distractors = []
        for other in others:
            at = rng.randrange(len(words[other]) - 16)
            distractors.append(" ".join(words[other][at : at + 16]))
        choices = [answer, *distractors]
        rng.shuffle(choices)
        docs.append({"context": context, "choices": choices, "answer": choices.index(answer)})
    return write_multiple_choice_task(directory, TASK, docs, doc_to_text="{{context}}")


def allocation_lookups(storage: str, study: str, scratch: Path) -> tuple[Any, dict[str, Path]]:
    """The study's session and one exported lookup per allocation: each no-search start point, and the export's
    choice among the candidates (by validation, as ``study export`` chooses)."""
    database = Database(storage)
    session = open_session(database, load_study_config(database, study))
    optuna_study = load_optuna_study(session)
    target = session.config.sparsity.targets[0]
    lookups: dict[str, Path] = {}
    for trial in no_search_trials(session, optuna_study, target):
        name = attrs.no_search_name(trial) or f"trial {trial.number}"
        point = export_point(session, [trial], target)
        lookups[name] = write_lookup(scratch / name, point.lookup)
    chosen = export_point(session, candidate_trials(session, optuna_study), target)
    lookups[f"export (trial {chosen.best.trial.number})"] = write_lookup(scratch / "export", chosen.lookup)
    return session, lookups


def main() -> None:
    """Evaluate every allocation of the study on the tasks and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="The study's database URL.")
    parser.add_argument("--study", required=True)
    parser.add_argument("--tasks", default=None, help="lm-eval task names (default: the local continuation task).")
    parser.add_argument("--items", type=int, default=200, help="Items of the local task.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tasks-") as scratch:
        session, lookups = allocation_lookups(args.storage, args.study, Path(scratch))
        include = None
        if args.tasks is None:
            documents = list(load_text("parlspeech").documents)
            include = write_continuation_task(Path(scratch), documents, args.items)
        task_set = prepare_tasks(args.tasks or TASK, include_path=include)
        loaded = session.loaded
        rows: dict[str, Any] = {}
        for position, (name, lookup) in enumerate(lookups.items()):
            evaluation = evaluate_tasks(
                loaded.model, loaded.tokenizer, lookup, task_set, batch_size=args.batch_size, dense=position == 0
            )
            if evaluation.dense is not None:
                rows["dense"] = {"metrics": _metrics(evaluation.dense), "measured_sparsity": 0.0}
            rows[name] = {"metrics": _metrics(evaluation.results), "measured_sparsity": evaluation.measured_sparsity}
    results = {"environment": environment(), "study": args.study, "tasks": args.tasks or TASK, "rows": rows}
    write_results(args.out, "tasks", results, "\n".join(_report(results)) + "\n")


def _metrics(results: dict[str, Any]) -> dict[str, float]:
    """``task/metric`` to value, for every numeric metric lm-eval reports (filters and stderr left out)."""
    found = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, where = key.partition(",")
            if where == "none" and isinstance(value, (int, float)) and not isinstance(value, bool):
                found[f"{task}/{metric}"] = float(value)
    return found


def _cell(metrics: dict[str, float], key: str) -> str:
    """``value ± stderr`` of one metric (lm-eval's standard error over items, where it gives one)."""
    value, error = metrics.get(key), metrics.get(f"{key}_stderr")
    if value is None:
        return "—"
    return f"{value:.4f}" + ("" if error is None else f" ± {error:.4f}")


def _report(results: dict[str, Any]) -> list[str]:
    rows = results["rows"]
    keys = sorted({key for row in rows.values() for key in row["metrics"] if not key.endswith("_stderr")})
    return [
        f"# Downstream tasks: study `{results['study']}`",
        "",
        "`python bench/tasks.py` (module docstring): each allocation exported as `study export` exports it, run "
        "by lm-evaluation-harness on the same items; `measured` is the sparsity the model ran at on the tasks' "
        "inputs (padding included). One run; no goal is set for these figures (issue 27 asks for the tool).",
        "",
        f"| allocation | measured | {' | '.join(keys)} |",
        f"|---|---|{'---|' * len(keys)}",
        *[
            f"| {name} | {row['measured_sparsity']:.4f} | " + " | ".join(_cell(row["metrics"], k) for k in keys) + " |"
            for name, row in rows.items()
        ],
    ]


if __name__ == "__main__":
    main()
