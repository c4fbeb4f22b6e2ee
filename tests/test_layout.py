"""The shape the README promises: the algorithm on one page, imports flowing one way, short lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {path.stem: ast.parse(path.read_text()) for path in sorted(ROOT.glob("*.py"))}
PURE = {"rewards", "sandbox", "curriculum", "sampler", "rundir", "flags"}  # import no project module


def project_imports(tree: ast.Module) -> set[str]:
    """The project modules a module imports (`import x` and `from x import y`), anywhere in its body."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names & set(MODULES)


def test_sqlm_fits_on_one_page_of_450_lines():
    assert len((ROOT / "sqlm.py").read_text().splitlines()) <= 450


def test_pure_modules_import_no_project_module_and_there_is_no_cycle():
    graph = {name: project_imports(tree) for name, tree in MODULES.items()}
    for name in PURE:
        assert graph[name] == set(), (name, graph[name])
    done, active = set(), []

    def visit(name):  # depth-first; meeting a module still on the path is a cycle
        assert name not in active, "import cycle: " + " -> ".join(active + [name])
        if name not in done:
            active.append(name)
            for imported in graph[name]:
                visit(imported)
            active.pop()
            done.add(name)

    for name in graph:
        visit(name)


def test_no_imports_inside_functions():
    for name, tree in MODULES.items():
        for function in (node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
            inner = [node for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))]
            assert not inner, f"{name}.{function.name} imports inside a function (line {inner[0].lineno})"


def test_lines_are_under_120_characters():
    for path in [*ROOT.glob("*.py"), *ROOT.glob("tests/*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert len(line) < 120, f"{path.name}:{number} is {len(line)} characters"
