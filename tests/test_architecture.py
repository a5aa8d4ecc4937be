"""Dependencies point one way (flows → tasks → serving) and serving stays free of the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_serving_imports_no_prefect_optuna_mlflow_or_tasks() -> None:
    code = (
        "import sys, serving.app, serving.bundle, serving.features, serving.config, serving.schemas;"
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
MLFLOW_DOORS = {"tasks/tracking.py", "bench/mlflow_peer.py", "bench/serve"}


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
    """Issue 9, item 3: nothing but tasks/tracking.py reaches MLflow (no client of its own, no mlflow.* call)."""
    assert mlflow_importers() - MLFLOW_DOORS == set()
    assert "tasks/tracking.py" in mlflow_importers()


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
