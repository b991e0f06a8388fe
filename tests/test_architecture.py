"""The library's shape (DESIGN.md): imports go one way, modules and functions sized to one idea,
run-folder file names known to one module. Read from the source with ast, so a regression fails
here rather than in review."""

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "selfsup"
MODULES = {p.stem: p for p in LIB.glob("*.py") if p.stem != "__init__"}

# Edges that must never come back: the run folder sits low, evaluation never depends on training,
# the library never depends on the report or the command line.
FORBIDDEN = {
    ("evaluate", "train"),
    ("runs", "train"),
    ("runs", "evaluate"),
    ("runs", "sweep"),
    ("runs", "report"),
    ("config", "runs"),
    ("methods", "config"),
    # the cluster layer submits what others define (a sweep's task function, the CLI's main), never imports them
    ("cluster", "sweep"),
    ("cluster", "train"),
    ("runs", "cluster"),
    ("train", "cluster"),
    # plan sits above train (it builds and steps the run as training does); nothing below it plans.
    *((m, "plan") for m in ("runs", "train", "evaluate", "events")),
    # events sits just above runs: training and evaluation write through it, it knows neither.
    *(("events", m) for m in ("train", "evaluate", "sweep")),
    *((m, "cli") for m in MODULES),
    *(
        (m, "report")
        for m in (
            "train",
            "evaluate",
            "sweep",
            "runs",
            "workbook",
            "display",
            "plots",
            "knn",
            "probe",
            "cluster",
            "plan",
            "events",
        )
    ),
}


def sibling_imports(path: Path) -> list[tuple[str, bool]]:
    """(module, inside a function) for each import of a selfsup module in `path`."""
    tree, out = ast.parse(path.read_text()), []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue  # annotations only: no import at run time
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                if child.module:
                    out.append((child.module.split(".")[0], inner))
                else:
                    out.extend((a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("selfsup"):
                mod = child.module.split(".")
                out.extend([(mod[1], inner)] if len(mod) > 1 else [(a.name, inner) for a in child.names])
            visit(child, inner)

    visit(tree, False)
    return [(m, f) for m, f in out if m in MODULES]


GRAPH = {name: sibling_imports(path) for name, path in MODULES.items()}


def test_no_sibling_import_inside_a_function():
    hidden = [f"{name} imports {dep} in a function" for name, deps in GRAPH.items() for dep, inner in deps if inner]
    assert hidden == []


def test_no_import_circle():
    edges = {name: {dep for dep, _ in deps} for name, deps in GRAPH.items()}
    state: dict[str, int] = {}

    def cycle_from(node, path):
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                return path + [dep]
            if dep not in state and (found := cycle_from(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for name in sorted(edges):
        if name not in state:
            assert cycle_from(name, [name]) is None


def test_no_forbidden_edge():
    edges = {(name, dep) for name, deps in GRAPH.items() for dep, _ in deps}
    assert sorted(edges & FORBIDDEN) == []


def test_modules_and_functions_sized_to_one_idea():
    long_modules = [
        f"{n}: {len(p.read_text().splitlines())} lines"
        for n, p in MODULES.items()
        if len(p.read_text().splitlines()) > 520
    ]
    assert long_modules == []
    long_functions = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (name, node.name) != ("train", "_loop"):
                length = node.end_lineno - node.lineno + 1
                if length > 85:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert long_functions == []


@pytest.mark.parametrize(
    "filename",
    [
        "config.json",
        "run.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "encoder.safetensors",
        "eval.json",
        "features.npz",
        "tsne.npz",
        "error.txt",
    ],
)
def test_run_folder_file_names_live_in_runs_only(filename):
    """Docstrings may describe the folder; code names its files through selfsup.runs."""
    users = []
    for name, path in MODULES.items():
        if name == "runs":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if filename in node.value and not node.value.startswith(("selfsup", " ")) and len(node.value) < 40:
                    users.append(f"{name}: {node.value!r}")
    assert users == []


def test_every_module_says_what_it_owns():
    assert [n for n, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))] == []
