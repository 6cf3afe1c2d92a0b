"""The package's modules depend on each other one way: no import cycles, and the layers hold.

Imports are read from the source with ``ast`` rather than by importing, so an import
inside a function (the usual way a cycle gets hidden) counts like one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import maskstatus

PACKAGE = "maskstatus"
# The installed package, not a path relative to this file: pointing PYTHONPATH at
# another checkout checks that checkout.
ROOT = Path(maskstatus.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    # A package's own __init__ is level 1 from itself; a plain module's level 1 is its parent.
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (TYPE_CHECKING blocks too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, name, path.name == "__init__.py")
                # ``from pkg import sub`` imports the submodule; ``from mod import x`` imports mod.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                # ``import maskstatus.infer.predict as m`` and friends: the deepest known module.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE) and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _offenders(graph: dict[str, set[str]], under: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    def inside(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    return {
        m: sorted(d for d in deps if any(inside(d, f) for f in forbidden))
        for m, deps in graph.items()
        if inside(m, under) and any(inside(d, f) for d in deps for f in forbidden)
    }


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "maskstatus.errors" in graph["maskstatus.data.validate"]
    assert "maskstatus.train.trainer" in graph["maskstatus.train.cv"]
    # cli imports its commands inside functions, so that ``--help`` stays fast.
    assert "maskstatus.infer.predict" in graph["maskstatus.cli"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles between modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_data_imports_no_layer_above_it():
    above = ("maskstatus.train", "maskstatus.infer", "maskstatus.serve", "maskstatus.analysis", "maskstatus.cli")
    assert _offenders(import_graph(), "maskstatus.data", above) == {}


def test_training_prediction_and_scoring_import_neither_cli_nor_serve():
    graph = import_graph()
    for package in ("maskstatus.train", "maskstatus.infer", "maskstatus.scoring"):
        assert _offenders(graph, package, ("maskstatus.cli", "maskstatus.serve")) == {}


def test_prediction_and_scoring_never_import_training():
    graph = import_graph()
    for package in ("maskstatus.infer", "maskstatus.scoring", "maskstatus.analysis"):
        assert _offenders(graph, package, ("maskstatus.train",)) == {}


def test_tracking_logs_runs_without_reaching_into_training_prediction_or_the_cli():
    """Training and cv call tracking; tracking reads a finished run's files (scoring) but never calls back."""
    graph = import_graph()
    assert "maskstatus.tracking" in graph["maskstatus.train.trainer"]
    above = ("maskstatus.train", "maskstatus.infer", "maskstatus.serve", "maskstatus.analysis", "maskstatus.cli")
    assert _offenders(graph, "maskstatus.tracking", above) == {}


def test_reading_validating_and_building_tables_run_one_way():
    graph = import_graph()
    data = "maskstatus.data."
    assert graph[data + "layout"].isdisjoint({data + "validate", data + "relabel", data + "tables"})
    assert graph[data + "validate"].isdisjoint({data + "relabel", data + "tables"})
    assert data + "tables" not in graph[data + "relabel"]


def test_training_and_scoring_do_not_depend_on_prediction():
    graph = import_graph()
    prediction = {"maskstatus.infer.predict", "maskstatus.infer.ensemble"}
    for name in ("infer.evaluate", "scoring.oof", "train.trainer", "train.cv", "scoring.score", "scoring.age_cuts",
                 "scoring.label_errors"):
        module = "maskstatus." + name
        assert module in graph, f"no module {module}"
        assert graph[module].isdisjoint(prediction), f"{name} imports {graph[module] & prediction}"


def test_serve_and_export_reach_a_run_only_through_the_prediction_pipeline():
    """Loading a run's models, its eval transforms, the image cache and Fabric set-up live in infer.pipeline only:
    serve and export import none of the modules that do that work, nor the predict command's module."""
    graph = import_graph()
    pipeline_work = {"maskstatus.models", "maskstatus.models.backbones", "maskstatus.data.transforms",
                     "maskstatus.data.cache", "maskstatus.data.dataset", "maskstatus.infer.evaluate",
                     "maskstatus.infer.predict", "maskstatus.infer.ensemble"}
    users = [m for m in graph if m.startswith("maskstatus.serve.") or m == "maskstatus.infer.export"]
    assert "maskstatus.serve.predictor" in users and "maskstatus.infer.export" in users
    for module in users:
        assert graph[module].isdisjoint(pipeline_work), f"{module} imports {sorted(graph[module] & pipeline_work)}"
    assert "maskstatus.infer.pipeline" in graph["maskstatus.serve.predictor"]
    assert "maskstatus.infer.pipeline" in graph["maskstatus.infer.export"]
    assert "maskstatus.infer.pipeline" in graph["maskstatus.infer.predict"]


def test_review_reads_a_cv_and_its_data_but_loads_no_model():
    """The label review page works from a CV's out-of-fold table and the data folder: it never trains, predicts or
    imports the command line, and nothing below it imports it."""
    graph = import_graph()
    assert "maskstatus.review.app" in graph
    models_and_cli = ("maskstatus.train", "maskstatus.infer", "maskstatus.serve", "maskstatus.cli")
    assert _offenders(graph, "maskstatus.review", models_and_cli) == {}
    for package in ("maskstatus.data", "maskstatus.scoring", "maskstatus.train", "maskstatus.infer",
                    "maskstatus.serve", "maskstatus.analysis"):
        assert _offenders(graph, package, ("maskstatus.review",)) == {}


def test_sweeps_sit_above_training_and_below_the_command_line():
    """sweep drives train (and reads runs, scoring and the report pages); nothing below it imports it."""
    graph = import_graph()
    assert "maskstatus.train.trainer" in graph["maskstatus.sweep.objective"]
    below = ("maskstatus.data", "maskstatus.train", "maskstatus.infer", "maskstatus.scoring", "maskstatus.analysis",
             "maskstatus.serve", "maskstatus.models")
    for package in below:
        assert _offenders(graph, package, ("maskstatus.sweep",)) == {}
    assert _offenders(graph, "maskstatus.sweep", ("maskstatus.cli", "maskstatus.serve")) == {}
