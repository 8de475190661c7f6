"""What ``sparsealloc tasks`` does: lm-eval's downstream tasks on a model, by name, with an exported lookup installed.

The library's :func:`allocator.integrations.lm_eval.evaluate_tasks` takes a model already loaded; this glue
loads it by name (an embedded model, a ``.gguf`` file, a Hugging Face directory) on the requested device, and
refuses what it can before the weights load: a bad lookup or sparsity, an unwritable results file, and an
unknown task or one whose data cannot be loaded (lm-eval's task index takes seconds to build, the model more).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator import frontier_point, load_model
from allocator.integrations.lm_eval import (
    TaskEvaluation,
    check_results_target,
    check_run_options,
    evaluate_tasks,
    prepare_tasks,
    write_task_results,
)


@dataclass(frozen=True)
class TaskRun:
    """What :func:`run_tasks` ran: the model's name and identity, the tasks, and lm-eval's measurements."""

    model: dict[str, Any]  # the loaded model's identity (name, source, architecture, blocks, fingerprint)
    tasks: tuple[str, ...]
    evaluation: TaskEvaluation


def run_tasks(
    lookup: str | Path,
    *,
    model: str,
    tasks: str | Sequence[str],
    include_path: Sequence[str | Path] = (),
    num_fewshot: int | None = None,
    limit: float | None = None,
    sparsity: float | None = None,
    dense: bool = False,
    batch_size: int = 8,
    log_samples: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    out: str | Path | None = None,
) -> TaskRun:
    """Load ``model`` and run lm-eval's ``tasks`` on it with the lookup at ``lookup`` installed (and, with
    ``dense``, without); write the results file to ``out`` when given.

    The options, the lookup (at ``sparsity``, for a frontier export), ``out`` and the tasks are checked before the model
    loads, each refusal one sentence.
    """
    check_run_options(num_fewshot, limit, batch_size)
    frontier_point(lookup, sparsity)
    if out is not None:
        check_results_target(out)
    task_set = prepare_tasks(tasks, include_path=list(include_path) or None)
    loaded = load_model(model, device=device or "auto", dtype=dtype or "auto")
    evaluation = evaluate_tasks(
        loaded.model,
        loaded.tokenizer,
        lookup,
        task_set,
        sparsity=sparsity,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        dense=dense,
        log_samples=log_samples,
    )
    if out is not None:
        write_task_results(evaluation, out)
    return TaskRun(model=loaded.identity(), tasks=task_set.names, evaluation=evaluation)
