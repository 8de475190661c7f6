"""lm-evaluation-harness as a consumer of our exports: downstream-task accuracy of a model with a lookup installed.

Perplexity and KL are what a study optimises; what users publish and compare is zero-shot accuracy on
lm-eval's tasks (the WAS reference and TEAL report ``piqa``, ``arc_easy``, ``arc_challenge``, ``hellaswag``,
``winogrande`` 0-shot and ``mmlu`` 5-shot). :func:`evaluate_tasks` installs a lookup with
:func:`allocator.load_lookup` and hands the very model object to lm-eval's ``HFLM`` (which accepts an
instantiated model and tokenizer), so lm-eval's own task registry, prompts, batching and metrics do the work:
nothing of lm-eval is rewritten here. With ``dense=True`` the same tasks run again with the hooks removed.

The sparsifiers count what they zero while lm-eval runs, so the result states the sparsity the model really
ran at on the tasks' tokens: thresholds calibrated on one corpus run at another sparsity elsewhere. lm-eval
pads the requests of a batch to one length and the padding positions run through the sparsifiers too, so
they are counted (``batch_size=1`` counts the tasks' tokens alone).

Task names are checked against lm-eval's registry (with ``include_path``: folders of the user's own task
YAMLs, lm-eval's mechanism for local data) and each task's data is loaded before any model work
(:func:`prepare_tasks`), so an unknown task, or one whose data cannot be read or downloaded, is one sentence.

lm-eval is an optional dependency (``pip install sparsealloc[eval]``), imported on first use; importing this
module needs neither lm-eval nor torch.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator.errors import InputError, OutputError, SparseallocError, first_line

LM_EVAL_REQUIREMENT = "lm-eval>=0.4,<0.5"
#: The ``format`` of the ``sparsealloc`` entry that :func:`task_results_document` adds to lm-eval's results.
TASKS_FORMAT = "sparsealloc.tasks/v1"
#: Lookup fields left out of the provenance: the per-site tables (the lookup file itself holds them).
_BULKY_FIELDS = ("blocks", "quantile_levels")


class LMEvalNotInstalledError(SparseallocError, ImportError):
    """The optional ``lm-eval`` package is needed (``pip install sparsealloc[eval]``) and not installed."""


def _import_lm_eval() -> tuple[Any, Any, Any]:
    """lm-eval's ``simple_evaluate``, ``TaskManager`` and ``HFLM``; or one sentence saying how to install it."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LMEvalNotInstalledError(
            f"lm-evaluation-harness is not installed; `pip install sparsealloc[eval]` ({LM_EVAL_REQUIREMENT})."
        ) from None
    return simple_evaluate, TaskManager, HFLM


@dataclass(frozen=True)
class TaskSet:
    """Tasks checked and loaded by lm-eval, ready to run: made once, before the model loads, and run as often as
    needed (the sparse and the dense model run the very same items)."""

    names: tuple[str, ...]  # as the user gave them
    items: tuple[Any, ...]  # lm-eval's top-level Task and Group objects, as simple_evaluate takes them
    task_manager: Any  # lm-eval's TaskManager (with the user's include paths), which simple_evaluate is given


def task_names(tasks: str | Sequence[str]) -> tuple[str, ...]:
    """Task names from a comma-separated string or a sequence (blanks dropped); refuses an empty list."""
    parts = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = tuple(str(name).strip() for name in parts if str(name).strip())
    if not names:
        raise InputError("Name at least one lm-eval task (e.g. `piqa,arc_easy`).")
    return names


def _include_paths(include_path: str | Path | Sequence[str | Path] | None) -> list[str]:
    """The include folders as strings; refuses one that is not a directory (lm-eval would ignore it silently)."""
    if include_path is None:
        return []
    paths = [include_path] if isinstance(include_path, str | Path) else list(include_path)
    for path in paths:
        if not Path(path).is_dir():
            raise InputError(f"The task folder {str(path)!r} given as include path is not a directory.")
    return [str(path) for path in paths]


def _unknown_task(name: str, known: Sequence[str], include: list[str]) -> InputError:
    """The sentence for a task name lm-eval does not know, with the closest known names."""
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    where = f" nor in {', '.join(repr(p) for p in include)}" if include else ""
    return InputError(
        f"lm-eval has no task {name!r} among its own{where}{hint}; `lm-eval ls tasks` lists them, and "
        "--include-path adds a folder of task YAMLs."
    )


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """The objects to hand simple_evaluate for one loaded name: its groups that no other group holds, and the
    tasks no group holds (a tag's tasks, or a task), so group scores (mmlu's) are aggregated as lm-eval does."""
    groups = loaded.get("groups") or {}
    children = {child for names in (loaded.get("group_map") or {}).values() for child in names}
    in_groups = {task.task_name for group in groups.values() for task in group.get_all_tasks()}
    top_groups = [group for name, group in groups.items() if name not in children]
    return top_groups + [task for name, task in loaded["tasks"].items() if name not in in_groups]


def prepare_tasks(
    tasks: str | Sequence[str], *, include_path: str | Path | Sequence[str | Path] | None = None
) -> TaskSet:
    """Check ``tasks`` (names, or paths of task YAMLs) against lm-eval's registry and load each task's data.

    ``include_path`` adds folders of the user's own task YAMLs (lm-eval's ``TaskManager(include_path=...)``),
    which is how tasks run offline from local files. A name lm-eval does not know, or a task whose data cannot
    be loaded (offline and not cached, a bad YAML, a missing file), is one sentence (:class:`InputError`),
    before any model work.
    """
    names = task_names(tasks)
    include = _include_paths(include_path)
    _, task_manager_class, _ = _import_lm_eval()
    manager = task_manager_class(include_path=include or None)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known and not (name.endswith((".yaml", ".yml")) and Path(name).is_file()):
            raise _unknown_task(name, sorted(known), include)
    items: list[Any] = []
    for name in names:
        try:
            loaded = manager.load([name])
        except Exception as error:  # lm-eval and datasets raise anything here; all of it is the task's data
            reason = first_line(error).rstrip(".")
            raise InputError(f"lm-eval cannot load task {name!r}: {reason}.") from error
        items += _top_level(loaded)
    return TaskSet(names=names, items=tuple(items), task_manager=manager)


def lookup_provenance(lookup: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """What a task result records of the lookup it ran with: its path and every field of its document but the
    per-site tables (model identity, score, target and achieved sparsity, calibration, study and trial...)."""
    fields = {key: value for key, value in lookup.items() if key not in _BULKY_FIELDS}
    return {"path": str(Path(path).absolute()), **fields}


@dataclass(frozen=True)
class TaskEvaluation:
    """What :func:`evaluate_tasks` measured: lm-eval's results with the lookup installed (and without, when
    asked), the sparsity the model really ran at on the tasks' inputs, and which lookup that was."""

    results: dict[str, Any]  # lm-eval's simple_evaluate output for the sparse model, as lm-eval gives it
    dense: dict[str, Any] | None  # the same for the dense model (hooks removed), or None
    measured_sparsity: float  # the sparsifiers' counts over every forward pass of the sparse run
    lookup: dict[str, Any]  # the lookup's provenance (:func:`lookup_provenance`)

    def table(self, *, dense: bool = False) -> str:
        """lm-eval's own Markdown table of the sparse (or the dense) run, with its group table when it has one."""
        from lm_eval.utils import make_table

        results = self.dense if dense else self.results
        if results is None:
            raise InputError("The dense model was not evaluated; run evaluate_tasks with dense=True.")
        tables = [make_table(results)]
        if results.get("groups"):
            tables.append(make_table(results, "groups"))
        return "\n".join(tables)

    def comparison(self) -> list[tuple[str, str, float, float | None]]:
        """``(task, metric, sparse value, dense value or None)`` per numeric metric of every task and group
        (``acc``; ``acc (filter)`` where the filter is not lm-eval's ``none``), in lm-eval's order."""
        rows = []
        for task, metrics in self.results.get("results", {}).items():
            dense = ((self.dense or {}).get("results") or {}).get(task, {})
            for key, value in metrics.items():
                metric, comma, where = key.partition(",")  # lm-eval's "metric,filter"; other keys are no metric
                if not comma or metric.endswith("_stderr") or not _is_number(value):
                    continue
                label = metric if where in ("", "none") else f"{metric} ({where})"
                other = dense.get(key)
                rows.append((task, label, float(value), float(other) if _is_number(other) else None))
        return rows


def _is_number(value: Any) -> bool:
    """A finite real number (lm-eval writes "N/A" or NaN where it has no value)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def check_run_options(num_fewshot: int | None, limit: float | None, batch_size: int) -> None:
    """Refuse, in one sentence, run options that lm-eval would fail on deep inside a run, or misread: checked
    by :func:`evaluate_tasks`, and by a caller that can check them before it loads a model."""
    whole = isinstance(num_fewshot, int) and not isinstance(num_fewshot, bool)
    if num_fewshot is not None and not (whole and num_fewshot >= 0):
        raise InputError(f"The value of `num_fewshot` should be a whole number of 0 or more, got {num_fewshot}.")
    if limit is not None and not (0 < limit < 1 or (limit >= 1 and float(limit).is_integer())):
        raise InputError(f"The value of `limit` should be a whole number of items, or a share in (0, 1), got {limit}.")
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
        raise InputError(
            "lm-eval's automatic batch size probes the model with batches of dummy tokens, which the sparsifiers "
            "would count in the measured sparsity; give `batch_size` as a number."
        )
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise InputError(f"The value of `batch_size` should be a positive whole number, got {batch_size!r}.")


def _run(lm: Any, task_set: TaskSet, *, num_fewshot: int | None, limit: float | None, log_samples: bool) -> Any:
    """One lm-eval run of ``task_set`` on ``lm`` (its seeds fixed by lm-eval, so two runs see the same items)."""
    simple_evaluate, _, _ = _import_lm_eval()
    return simple_evaluate(
        model=lm,
        tasks=list(task_set.items),
        num_fewshot=num_fewshot,
        limit=int(limit) if limit is not None and limit >= 1 else limit,
        task_manager=task_set.task_manager,
        log_samples=log_samples,
    )


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    lookup: str | Path,
    tasks: str | Sequence[str] | TaskSet,
    *,
    sparsity: float | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    batch_size: int = 8,
    dense: bool = False,
    log_samples: bool = False,
) -> TaskEvaluation:
    """Run lm-eval's ``tasks`` on ``model`` (a transformers causal LM) with the lookup at ``lookup`` installed.

    The model and ``tokenizer`` are handed to lm-eval's ``HFLM`` as they are, and the lookup is installed with
    :func:`allocator.load_lookup` (``sparsity`` picks a frontier export's point), so lm-eval's own prompts,
    batching and metrics run on the sparse model. ``tasks``: names or task YAML paths (a comma-separated string
    or a sequence), checked first with ``include_path`` (:func:`prepare_tasks`), or a :class:`TaskSet` already
    prepared. ``num_fewshot``, ``limit`` (items per task, or a share below 1), ``batch_size`` (a number:
    lm-eval's ``"auto"`` probes would be counted) and ``log_samples`` (per-item records in the results'
    ``samples``) are lm-eval's. ``dense=True`` runs the same items again with the hooks removed. The model is
    dense again when this returns, however it returns.
    """
    from allocator.export import frontier_point, load_lookup

    check_run_options(num_fewshot, limit, batch_size)
    _, _, hflm_class = _import_lm_eval()
    chosen = frontier_point(lookup, sparsity)  # a bad lookup or sparsity before the tasks load
    task_set = tasks if isinstance(tasks, TaskSet) else prepare_tasks(tasks, include_path=include_path)
    lm = hflm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    options = {"num_fewshot": num_fewshot, "limit": limit, "log_samples": log_samples}
    with load_lookup(model, lookup, sparsity) as sparsifiers:
        sparsifiers.reset_counts()
        results = _run(lm, task_set, **options)
        measured = sparsifiers.measured_model_sparsity()
    dense_results = _run(lm, task_set, **options) if dense else None
    return TaskEvaluation(
        results=results, dense=dense_results, measured_sparsity=measured, lookup=lookup_provenance(chosen, lookup)
    )


def plain_json(value: Any) -> Any:
    """``value`` as plain JSON data: lm-eval's results hold dtypes, tuples, numpy numbers and NaN, which
    ``json`` refuses or writes as no JSON reader reads them (non-finite numbers become null, objects their
    ``str``)."""
    if isinstance(value, dict):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(float(value)) else None
    return str(value)


def task_results_document(evaluation: TaskEvaluation) -> dict[str, Any]:
    """The results file: lm-eval's results document of the sparse run as lm-eval gives it (``results``,
    ``configs``, ``versions``, ``n-shot``...; so lm-eval's readers read it), plus a ``sparsealloc`` entry with the
    lookup's provenance, the measured sparsity, and the dense run and the differences where it was run."""
    dense = evaluation.dense is not None
    differences: dict[str, dict[str, float]] = {}
    for task, metric, sparse_value, dense_value in evaluation.comparison():
        if dense_value is not None:
            differences.setdefault(task, {})[metric] = sparse_value - dense_value
    return {
        **plain_json(evaluation.results),
        "sparsealloc": {
            "format": TASKS_FORMAT,
            "lookup": plain_json(evaluation.lookup),
            "measured_sparsity": evaluation.measured_sparsity,
            "measured_on": "every position lm-eval ran through the sparse model (batch padding included)",
            "dense": plain_json(evaluation.dense) if dense else None,
            "difference": differences if dense else None,
        },
    }


def _results_subject(path: Path) -> str:
    return f"Cannot write the task results to {str(path)!r}"


def check_results_target(path: str | Path) -> None:
    """Refuse, before any model loads, a place the results file cannot be written to (or a directory)."""
    from allocator.paths import check_writable_place

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{_results_subject(path)}: it is a directory.")
    check_writable_place(path, _results_subject(path))


def write_task_results(evaluation: TaskEvaluation, path: str | Path) -> None:
    """Write :func:`task_results_document` to the file ``path`` atomically (a reader sees the old or the new)."""
    from allocator.export import atomic_write_bytes
    from allocator.paths import path_problem

    path = Path(path)
    text = json.dumps(task_results_document(evaluation), indent=2, allow_nan=False) + "\n"
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as error:
        raise OutputError(f"{_results_subject(path)}: {path_problem(error)}.") from error


def item_loglikelihoods(results: dict[str, Any]) -> dict[str, list[list[float]]]:
    """Per task, per item (by lm-eval's ``doc_id``), the log-likelihood of each choice of a log-likelihood task
    (multiple choice), from a run with ``log_samples=True``: what tells two models apart where a small task's
    accuracy does not."""
    samples = results.get("samples")
    if not samples:
        raise InputError("The results hold no samples; run with log_samples=True.")
    return {
        task: [[float(response[0][0]) for response in item["resps"]] for item in sorted(items, key=_doc_id)]
        for task, items in samples.items()
    }


def _doc_id(item: dict[str, Any]) -> int:
    return int(item["doc_id"])
