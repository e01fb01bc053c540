"""The package's shape: no import cycle (imports inside functions count), and the library never imports the
experiments layer or the benchmark."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dapt_lightning"
LIBRARY_SUBPACKAGES = ("model", "data", "callbacks", "inference")
EXPERIMENTS = "dapt_lightning.experiments"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str], package: str) -> set[str]:
    """The package modules ``path`` (a module of ``package``) imports anywhere: module level, functions,
    TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            # The closest enclosing package module (``a.b.c`` names a function of ``a.b``: the edge is to ``a.b``).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files)
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = imported_modules(path, known, package) - {name}
        # Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: parents are edges too, except one's own.
        for target in list(edges):
            parent = target.rpartition(".")[0]
            while parent and parent != "dapt_lightning":
                if not name.startswith(parent + ".") and parent != name:
                    edges.add(parent)
                parent = parent.rpartition(".")[0]
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # Imports inside functions are edges too.
    source = tmp_path / "mod.py"
    source.write_text("def late():\n    from dapt_lightning.cli import main\n")
    known = {"dapt_lightning.cli", "dapt_lightning"}
    assert imported_modules(source, known, "dapt_lightning") == {"dapt_lightning.cli"}


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_library_never_imports_the_experiments_layer() -> None:
    graph = import_graph()
    library = [name for name in graph if not name.startswith((EXPERIMENTS, "dapt_lightning.cli"))]
    for subpackage in LIBRARY_SUBPACKAGES:
        assert any(name.startswith(f"dapt_lightning.{subpackage}.") for name in library), subpackage
    offending = {
        name: sorted(t for t in graph[name] if t.startswith((EXPERIMENTS, "dapt_lightning.cli"))) for name in library
    }
    assert not any(offending.values()), offending
    # Nor the benchmark, which lives outside the package.
    sources = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    assert "import benchmarks" not in sources and "from benchmarks" not in sources


def test_the_package_root_keeps_a_handful_of_modules() -> None:
    root_modules = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    assert len(root_modules) <= 8, root_modules


def test_every_subcommand_parses_with_jsonargparse_not_argparse() -> None:
    offending = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(
            isinstance(node, ast.Import | ast.ImportFrom)
            and "argparse" in ([alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module])
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert not offending, offending


def test_the_experiments_layer_is_small_files_imported_only_by_the_cli_entry() -> None:
    experiments = PACKAGE / "experiments"
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in experiments.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 300
    }
    assert not long, f"files of the experiments layer over 300 lines: {long}"
    graph = import_graph()
    importers = {name for name, targets in graph.items() if any(t.startswith(EXPERIMENTS) for t in targets)}
    assert {name for name in importers if not name.startswith(EXPERIMENTS)} == {"dapt_lightning.cli"}
