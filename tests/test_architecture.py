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


def _lazy_table(path: Path) -> dict[str, str]:
    """A package's ``_LAZY`` table (public name -> defining module), or {} if it has none."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_LAZY":
            return ast.literal_eval(node.value)
    return {}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.update(id(inner) for inner in ast.walk(node))
    return found


def _imports(path: Path, modules: dict[str, Path], tables: dict[str, dict[str, str]]) -> set[str]:
    """Our modules that the module at ``path`` imports, at module level or inside a function (typing-only
    imports aside). ``from package import name`` counts as an import of the module that defines ``name``,
    also where the package re-exports it lazily (its ``_LAZY`` table)."""
    tree = ast.parse(path.read_text())
    typing_only = _type_checking_nodes(tree)
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                targets.add(full if full in modules else tables.get(node.module, {}).get(alias.name, node.module))
    return {t for t in targets if t in modules}


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    tables = {name: _lazy_table(path) for name, path in modules.items() if path.name == "__init__.py"}
    graph = {name: _imports(path, modules, tables) - {name} for name, path in modules.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of the code: drop parent -> child edges.
    return {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}


def test_there_is_no_import_cycle_not_even_inside_functions():
    graph = _import_graph()
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


# allocator's subpackages, each with what it may import (besides allocator.errors, allocator.paths,
# allocator._lazy and allocator.schema, which import nothing of ours but the errors). One-way: the model side
# at the bottom, the search and the export formats above the sparse model, the integrations and test helpers
# on top.
ALLOCATOR_LAYERS: dict[str, set[str]] = {
    "allocator.model": set(),
    "allocator.data": set(),
    "allocator.sparsity": {"allocator.model"},
    "allocator.search": {"allocator.model", "allocator.sparsity", "allocator.data"},
    "allocator.export": {"allocator.model", "allocator.sparsity"},
    "allocator.integrations": {"allocator.model", "allocator.sparsity", "allocator.search", "allocator.export"},
    "allocator.testing": {"allocator.model", "allocator.sparsity", "allocator.search", "allocator.data"},
}
# allocator.schema: the pydantic bases (strict settings, strict documents) that the export formats, the samplers'
# options and studies' configuration share; it imports only pydantic.
ALLOCATOR_BASE = {"allocator", "allocator.errors", "allocator.paths", "allocator._lazy", "allocator.schema"}


def _allocator_part(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "allocator" and ".".join(parts[:2]) in ALLOCATOR_LAYERS else module


def test_allocator_subpackages_import_one_way():
    graph = _import_graph()
    found = {_allocator_part(m) for m in graph if m.startswith("allocator.")} - ALLOCATOR_BASE
    assert found == set(ALLOCATOR_LAYERS), f"allocator holds modules outside its subpackages: {found}"
    wrong = []
    for module, targets in graph.items():
        part = _allocator_part(module)
        if part not in ALLOCATOR_LAYERS:
            continue
        for target in targets:
            other = _allocator_part(target)
            if other.startswith("allocator") and other != part and other not in ALLOCATOR_BASE | ALLOCATOR_LAYERS[part]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_every_allocator_subpackage_lists_its_public_names_and_says_what_it_owns():
    for part in ALLOCATOR_LAYERS:
        path = ROOT / Path(*part.split(".")) / "__init__.py"
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{part} has no docstring"
        assert "__all__" in path.read_text(), f"{part} has no __all__"


@pytest.mark.parametrize(
    "statement",
    [
        "import allocator.search.trial_attributes",
        "import storage",
        "from studies import summarize, load_study_config",
        "from studies.cli import main",
    ],
)
def test_read_paths_import_neither_torch_nor_botorch(statement):
    probe = f"import sys; {statement}; print(sorted(m for m in ('torch', 'botorch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("package", ["studies", "bench"])
def test_the_lint_refuses_a_private_import_across_packages(package):
    ruff = Path(sys.executable).with_name("ruff")
    offender = ROOT / package / "_lint_probe.py"
    offender.write_text("from allocator.search._constraint import ConstraintSpace\n\n__all__ = ['ConstraintSpace']\n")
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


# bench/ under the product's rules: short functions, no script importing another, no private access.

BENCH = ROOT / "bench"


def _bench_modules() -> dict[str, ast.Module]:
    """Every module of bench/ (scripts and their shared private modules), parsed, by file stem."""
    return {path.stem: ast.parse(path.read_text()) for path in sorted(BENCH.glob("*.py"))}


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_bench_has_scripts_and_shared_modules():
    modules = _bench_modules()
    assert {"allocators", "frontier", "_common"} <= set(modules), sorted(modules)


def test_no_bench_function_is_longer_than_sixty_lines():
    long = [
        f"bench/{stem}.py: {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for stem, tree in _bench_modules().items()
        for node in _functions(tree)
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every module a tree imports, at module level or inside functions, with ``from x import y`` as ``x.y``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_bench_module_imports_a_bench_script():
    modules = _bench_modules()
    scripts = {stem for stem in modules if not stem.startswith("_")}
    offenders = [
        f"bench/{stem}.py imports {target}"
        for stem, tree in modules.items()
        for target in _imported_modules(tree)
        if target.split(".")[0] in scripts or (target.startswith("bench.") and target.split(".")[1] in scripts)
    ]
    assert not offenders, offenders


def test_bench_imports_no_private_name_of_another_package():
    # Ruff's PLC2701 checks module-level imports; this also sees imports inside functions (``optuna._*``, ...).
    offenders = [
        f"bench/{stem}.py imports {target}"
        for stem, tree in _bench_modules().items()
        for target in _imported_modules(tree)
        if target.split(".")[0] != "bench" and any(_private(part) for part in target.split("."))
    ]
    assert not offenders, offenders


def test_bench_reaches_no_private_attribute():
    offenders = [
        f"bench/{stem}.py:{node.lineno}: {ast.unparse(node)}"
        for stem, tree in _bench_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))  # an object's own
    ]
    assert not offenders, offenders


def test_every_public_bench_function_and_class_says_what_it_is_for():
    missing = []
    for stem, tree in _bench_modules().items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not _private(node.name):
                docstring = ast.get_docstring(node)
                if not docstring or "." not in docstring:
                    missing.append(f"bench/{stem}.py: {node.name}")
    assert not missing, missing


def _public_definitions(body: list[ast.stmt], prefix: str = "") -> list[tuple[str, ast.AST]]:
    """The public functions and classes of a module body, with the methods (properties included, dunder methods
    not) of its public classes, recursively: ``(qualified name, node)`` pairs."""
    found: list[tuple[str, ast.AST]] = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            found.append((prefix + node.name, node))
            if isinstance(node, ast.ClassDef):
                found += _public_definitions(node.body, f"{prefix}{node.name}.")
    return found


def _is_a_sentence(docstring: str | None) -> bool:
    """At least one sentence: a few words and a full stop, not a bare word or a fragment."""
    return bool(docstring) and "." in docstring and len(docstring.split()) >= 3


def test_every_public_function_and_class_says_what_it_is_for():
    missing = [
        f"{path.relative_to(ROOT)}:{node.lineno} {name}"
        for path in sorted(_modules().values())
        for name, node in _public_definitions(ast.parse(path.read_text()).body)
        if not _is_a_sentence(ast.get_docstring(node))
    ]
    assert not missing, f"{len(missing)} public functions and classes say nothing of what they are for: {missing}"


OPTUNA_DOOR = ROOT / "allocator" / "search" / "_optuna_internals.py"


def _private_reaches(path: Path) -> list[str]:
    """``x._name`` on anything but ``self``/``cls``, and imports of Optuna's private modules, in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        private = isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        if private and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
        modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        modules += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        for module in modules:
            if module.startswith("optuna") and any(part.startswith("_") for part in module.split(".")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} import {module}")
    return found


def test_only_the_optuna_door_reaches_a_private_attribute_or_optuna_internal():
    reaches = [r for path in _modules().values() if path != OPTUNA_DOOR for r in _private_reaches(path)]
    assert not reaches, reaches
    assert _private_reaches(OPTUNA_DOOR), "the door no longer needs Optuna's internals: remove it"


def test_optuna_is_a_version_the_door_was_written_for():
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    from allocator.search import OPTUNA_VERSIONS

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = next(Requirement(d) for d in dependencies if Requirement(d).name == "optuna")
    assert str(pinned.specifier) == str(Requirement(f"optuna{OPTUNA_VERSIONS}").specifier)
    assert pinned.specifier.contains(version("optuna")), version("optuna")
