"""Dependencies point one way (flows → tasks → serving) and serving stays free of the training stack."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_serving_imports_no_prefect_optuna_mlflow_or_tasks() -> None:
    code = (
        "import sys, serving.app, serving.bundle, serving.features, serving.config, serving.openapi;"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'optuna', 'mlflow', 'tasks', 'flows'});"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def imported_roots(folder: str) -> set[str]:
    roots: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
    return roots


def test_dependencies_point_one_way() -> None:
    assert not imported_roots("serving") & {"tasks", "flows", "deployments", "prefect", "optuna", "mlflow"}
    assert "flows" not in imported_roots("tasks")


# Modules that may import mlflow: the one door, and the serving benchmark's MLflow peer (it measures MLflow's own
# model server, so it saves a pyfunc the way an MLflow user would).
MLFLOW_DOORS = {"tasks/registry/tracking.py", "bench/mlflow_peer.py", "bench/serve"}


def mlflow_importers() -> set[str]:
    found = set()
    files = [
        *ROOT.glob("flows/*.py"),
        *(ROOT / "tasks").rglob("*.py"),
        *ROOT.glob("deployments/*.py"),
        *ROOT.glob("bench/*"),
    ]
    for path in files:
        if path.is_dir() or path.suffix not in {".py", ""}:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                found.add(str(path.relative_to(ROOT)))
    return found


def test_one_door_to_mlflow() -> None:
    """Issue 9, item 3: nothing but tasks/registry/tracking.py reaches MLflow (no client of its own, no mlflow.* call)."""
    assert mlflow_importers() - MLFLOW_DOORS == set()
    assert "tasks/registry/tracking.py" in mlflow_importers()


def test_the_release_flows_read_as_their_diagram() -> None:
    """Issue 20: no Docker, registry-HTTP or MLflow call in the deploy and rollback flows (the steps are in
    tasks/release/), and one error type leaves them (the flows are wrapped by ``one_error``)."""
    import ast

    for name in ("deploy", "rollback"):
        source = (ROOT / "flows" / f"{name}.py").read_text()
        imported = {
            (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
            for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        assert not imported & {"docker", "httpx", "requests", "mlflow"}, (name, imported)
        assert "@one_error" in source, name


PACKAGES = ("flows", "tasks", "serving", "deployments")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (at module level or inside a function: a lazy import is still a
    dependency). ``from pkg import mod`` counts as importing ``pkg.mod`` when that is a module."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(f"{m}.")}
        graph[name] = {m for m in graph[name] if m not in PACKAGES}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


STAGES = ("data", "model", "registry", "release", "monitoring")
SHARED = {"__init__.py", "common.py", "settings.py", "stats.py", "errors.py"}


def test_tasks_are_packages_by_stage_each_saying_what_it_is_for() -> None:
    """``tasks/`` holds the stage packages and the few modules every stage shares, nothing else."""
    loose = {p.name for p in (ROOT / "tasks").glob("*.py")} - SHARED
    assert loose == set(), f"modules outside a stage package: {sorted(loose)}"
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((ROOT / "tasks" / stage / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) <= 12, stage


def definitions(name: str) -> list[str]:
    """Modules of flows/, tasks/, serving/ and deployments/ that define a function, class or constant ``name``."""
    found = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                defined = (
                    [node.name]
                    if isinstance(node, ast.FunctionDef | ast.ClassDef)
                    else [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
                    + [
                        e.id
                        for t in getattr(node, "targets", [])
                        if isinstance(t, ast.Tuple)
                        for e in t.elts
                        if isinstance(e, ast.Name)
                    ]
                )
                if name in defined:
                    found.append(str(path.relative_to(ROOT)))
    return found


def test_one_definition_of_the_statistics_and_the_alias_names() -> None:
    for name in ("psi", "quantile_edges", "numeric_counts", "auc_and_ks", "PSI_FLOOR"):
        assert definitions(name) == ["tasks/stats.py"], (name, definitions(name))
    for name in ("numeric_edges", "PSI_EPSILON", "_ks", "_auc_ks", "_grouped"):
        assert definitions(name) == [], (name, definitions(name))
    assert definitions("Alias") == ["tasks/registry/aliases.py"]
    for name in ("CHAMPION", "CANDIDATE"):
        assert definitions(name) == [], (name, definitions(name))


LINE_LIMIT = 400
# The folders whose modules are held to LINE_LIMIT lines ("serving" joins when its rewrite lands).
LINE_LIMITED = ("flows", "tasks", "serving")


def test_no_module_is_over_the_line_limit() -> None:
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for folder in LINE_LIMITED
        for path in (ROOT / folder).rglob("*.py")
    }
    over = {path for path, n in lengths.items() if n > LINE_LIMIT}
    assert over == set(), {path: lengths[path] for path in sorted(over)}


def _submodule(name: str) -> bool:
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_every_import_of_the_bench_scripts_resolves() -> None:
    """bench/ is not imported by the suite, so a module move must not leave its imports behind (bench/train's
    did once, after tasks/ moved into stage packages)."""
    import importlib

    missing = []
    for path in sorted((ROOT / "bench").iterdir()):
        if not path.is_file() or path.suffix not in ("", ".py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] not in {"serving", "tasks", "flows", "deployments"}:
                    continue
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and not _submodule(f"{node.module}.{alias.name}"):
                        missing.append(f"{path.name}: {node.module}.{alias.name}")
    assert missing == []


def test_importing_a_flow_changes_nothing(tmp_path: Path) -> None:
    """A worker imports a flow module to run it: that import sets no variable and creates no state folder;
    each flow's main() configures the environment (issue 22)."""
    state = tmp_path / "state"
    script = (
        "import os, json, importlib\n"
        "before = dict(os.environ)\n"
        "for name in ('training', 'deploy', 'score', 'monitor', 'rollback', 'tune_worker'):\n"
        "    importlib.import_module('flows.' + name)\n"
        "print(json.dumps(sorted(k for k in os.environ if os.environ.get(k) != before.get(k))))\n"
    )
    ours = ("PREFECT_", "MLFLOW_", "DO_NOT_TRACK", "GIT_PYTHON_REFRESH")  # what configure_environment sets
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env["LOANRISK_STATE_DIR"] = str(state)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    changed = json.loads(done.stdout.strip().splitlines()[-1])
    assert [k for k in changed if k.startswith(ours)] == []
    assert not state.exists()


def exception_classes(folder: str) -> dict[str, list[str]]:
    """Each exception class defined under ``folder`` (module:Name) and the names of its bases."""
    found = {}
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                found[f"{path.relative_to(ROOT)}:{node.name}"] = bases
    return found


def test_one_error_hierarchy() -> None:
    """Every error tasks/, flows/ and deployments/ raise on purpose derives from tasks/errors.py's three kinds."""
    classes = {k: v for f in ("tasks", "flows", "deployments") for k, v in exception_classes(f).items()}
    names = {k.split(":")[1]: v for k, v in classes.items()}

    def is_ours(name: str, seen: frozenset[str] = frozenset()) -> bool | None:
        if name in {"PermanentError", "TransientError", "BadInputError", "LoanRiskError"}:
            return True
        if name in {"Exception", "RuntimeError", "ValueError", "KeyError", "TypeError", "OSError"}:
            return False
        if name not in names or name in seen:
            return None
        results = [is_ours(b, seen | {name}) for b in names[name]]
        return True if True in results else (False if False in results else None)

    stray = [k for k in classes if is_ours(k.split(":")[1]) is False]
    assert stray == [], f"errors outside the hierarchy: {stray}"
    serving = [
        k
        for k, v in exception_classes("serving").items()
        if any(b.endswith(("Error", "Exception")) for b in v)
    ]
    assert len(serving) <= 5, f"serving has its own small set of errors, not {serving}"
