"""The code base keeps its shape: dependencies point one way (tasks -> plugin packages ->
bhive), there are no import cycles, no module outgrows a reader, and no logic is copied
between modules. Read with the standard library's ``ast``, without importing anything."""

from __future__ import annotations

import ast
import hashlib
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bhive", "tasks", "models", "dataloaders", "processors")
PLUGIN_PACKAGES = ("models", "dataloaders", "processors")
#: may import: every package may import bhive; plugin packages may import each other's bases
ALLOWED = {
    "bhive": {"bhive"},
    "models": {"bhive", "models", "dataloaders"},
    "dataloaders": {"bhive", "dataloaders"},
    "processors": {"bhive", "processors"},
    "tasks": {"bhive", "tasks", *PLUGIN_PACKAGES},
}
MAX_LINES = 600
LONG_ALLOWED = {"bhive/simulation/detector.py"}  # one physics model, kept whole on purpose
WINDOW = 6  # lines that count as a copy


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports at any depth of its code (deferred imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = set()
        for imported in imports(path, name):
            # "from bhive import training" names the module bhive.training
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_dependencies_point_one_way():
    wrong = []
    for name, targets in internal_graph().items():
        top = name.split(".")[0]
        for target in targets:
            if target.split(".")[0] not in ALLOWED[top]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "dependencies must point tasks -> plugin packages -> bhive:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = internal_graph()
    # a package's __init__ importing its own submodules is how re-exports work, not a cycle
    edges = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_outgrows_a_reader():
    long = [f"{path.relative_to(REPO)}: {n} lines" for path in modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES
            and str(path.relative_to(REPO)) not in LONG_ALLOWED]
    assert not long, f"modules over {MAX_LINES} lines; split them by concept:\n" + "\n".join(long)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines of code, whitespace-normalised, without comments, docstrings, imports and blank lines."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno, node.end_lineno + 1))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = re.sub(r"\s+", " ", line.split("#")[0]).strip()
        # a closing bracket or a lone keyword carries no logic of its own
        if number not in skip and len(text) > 3:
            lines.append((number, text))
    return lines


def test_no_logic_is_copied_between_modules():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in modules().values():
        lines = _code_lines(path)
        for start in range(len(lines) - WINDOW + 1):
            window = lines[start:start + WINDOW]
            digest = hashlib.sha256("\n".join(text for _, text in window).encode()).hexdigest()
            seen[digest].append(f"{path.relative_to(REPO)}:{window[0][0]}")
    copies = sorted({" and ".join(sorted(set(places))) for places in seen.values() if len(set(places)) > 1})
    assert not copies, f"the same {WINDOW} lines of code in several places; give them one home:\n" + "\n".join(copies)
