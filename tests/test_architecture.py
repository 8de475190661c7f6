"""The codebase's shape: small functions, no import cycles, public APIs between packages, light read paths."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("allocator", "studies", "storage")
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def _module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``name`` imports when it is imported (imports inside functions run later)."""
    tree = ast.parse(path.read_text())
    targets: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if isinstance(node, ast.Try | ast.If) else [node]:
            if isinstance(inner, ast.Import):
                targets.update(alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                targets.add(inner.module)
                targets.update(f"{inner.module}.{alias.name}" for alias in inner.names)
    return {t for t in targets if t in known and t != name}


def test_there_is_no_import_cycle():
    modules = _modules()
    graph = {name: _module_level_imports(name, path, set(modules)) for name, path in modules.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of the code: drop parent -> child edges.
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


@pytest.mark.parametrize(
    "statement",
    [
        "import allocator.trial_attributes",
        "import storage",
        "from studies import summarize, load_study_config",
        "from studies.cli import main",
    ],
)
def test_read_paths_import_neither_torch_nor_botorch(statement):
    probe = f"import sys; {statement}; print(sorted(m for m in ('torch', 'botorch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_lint_refuses_a_private_import_across_packages(tmp_path):
    ruff = Path(sys.executable).with_name("ruff")
    offender = ROOT / "studies" / "_lint_probe.py"
    offender.write_text("from allocator._constraint import ConstraintSpace\n\n__all__ = ['ConstraintSpace']\n")
    try:
        result = subprocess.run(
            [str(ruff), "check", "--no-cache", "--output-format", "concise", str(offender)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
    finally:
        offender.unlink()
    assert result.returncode == 1 and "import-private-name" in result.stdout, result.stdout + result.stderr
