"""The image's inputs: requirements pinned like the venv, the build context, the Dockerfile, import hygiene."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tasks.release import build_context
from tasks.release.build_context import COMPLETE_MARKER, prepare_build_context, requirements_hash
from tasks.release.engine import DeployStepError

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "serving" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[name] = pinned
    return pins


def test_requirements_are_pinned_to_the_tested_versions() -> None:
    pins = _pins()
    assert {"catboost", "numpy", "flask", "gunicorn", "orjson", "prometheus-client"} <= set(pins)
    assert not {"mlflow", "prefect", "optuna", "matplotlib", "plotly", "pydantic-settings"} & set(pins)
    for name, pinned in pins.items():
        assert pinned, f"{name} is not pinned"
        assert version(name) == pinned, (
            f"serving/requirements.txt pins {name}=={pinned}, the venv has {version(name)}"
        )


def test_the_image_code_imports_no_orchestration_or_tracking() -> None:
    """The service's modules and the build stage's prune.py (run as a file in the image, not as a package)."""
    code = (
        "import sys, runpy, serving.app, serving.openapi, serving.healthcheck;"
        "runpy.run_path('tasks/release/prune.py', run_name='prune');"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'optuna', 'mlflow', 'tasks', "
        "'pydantic_settings'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_requirements_hash_ignores_comments(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("flask==3.1.3\n# note\nnumpy==2.4.6\n")
    b = tmp_path / "b.txt"
    b.write_text("numpy==2.4.6  # pinned\n\nflask==3.1.3\n")
    assert requirements_hash(a) == requirements_hash(b)
    b.write_text("numpy==2.4.5\nflask==3.1.3\n")
    assert requirements_hash(a) != requirements_hash(b)


@pytest.fixture
def fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for ``pip download``: records its arguments, writes one wheel per requirement."""
    calls = tmp_path / "pip-calls.txt"
    script = tmp_path / "fake_pip.py"
    script.write_text(
        "import sys, pathlib\n"
        f"pathlib.Path({str(calls)!r}).open('a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "req, dest = pathlib.Path(args[args.index('-r') + 1]), pathlib.Path(args[args.index('-d') + 1])\n"
        "for line in req.read_text().splitlines():\n"
        "    line = line.split('#')[0].strip()\n"
        "    if line:\n"
        "        name, v = line.split('==')\n"
        "        (dest / f'{name}-{v}-py3-none-any.whl').write_bytes(b'wheel')\n"
    )
    monkeypatch.setattr(build_context, "pip_command", lambda helper: [sys.executable, str(script)])
    return calls


def test_prepare_build_context(tmp_path: Path, bundle_dir: Path, fake_pip: Path) -> None:
    (bundle_dir / "bundle.json").chmod(0o600)  # as training's atomic writer leaves it
    cache = tmp_path / "wheels-cache"
    out = prepare_build_context(bundle_dir, tmp_path / "ctx", cache)
    assert out == tmp_path / "ctx"
    assert (out / "Dockerfile").read_text() == (ROOT / "Dockerfile").read_text()
    assert (out / ".dockerignore").is_file()
    assert (out / "serving" / "app.py").is_file() and (out / "serving" / "requirements.txt").is_file()
    assert not list(out.rglob("__pycache__"))
    assert (out / "bundle" / "model.cbm").is_file()
    assert stat.S_IMODE((out / "bundle" / "bundle.json").stat().st_mode) == 0o644
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    assert len(wheels) == len(_pins()) and all(w.endswith(".whl") for w in wheels)
    args = fake_pip.read_text().splitlines()
    assert len(args) == 1
    assert "--only-binary=:all:" in args[0] and "--no-deps" in args[0] and "--python-version 3.11" in args[0]
    assert "--platform manylinux2014_x86_64" in args[0]
    assert (cache / requirements_hash() / COMPLETE_MARKER).is_file()

    (out / "stale.txt").write_text("left over")
    again = prepare_build_context(bundle_dir, out, cache)  # fresh context, cached wheels
    assert not (again / "stale.txt").exists()
    assert len(fake_pip.read_text().splitlines()) == 1


def test_prepare_build_context_needs_a_bundle(tmp_path: Path, fake_pip: Path) -> None:
    with pytest.raises(DeployStepError, match="not a model bundle"):
        prepare_build_context(tmp_path, tmp_path / "ctx", tmp_path / "cache")


def test_dockerfile_recipe() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", text, re.M)) == 2  # multi-stage, same base
    assert "python3 -m venv /opt/venv" in text
    assert "--no-index --find-links /wheels" in text
    assert re.search(r"^USER (?!0|root)\S+", text, re.M)
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "serving.healthcheck" in text
    assert "curl" not in text.split("HEALTHCHECK", 1)[1]
    assert "COPY bundle/ /app/bundle/" in text
    for arg in ("MODEL_NAME", "MODEL_VERSION", "GIT_COMMIT"):
        assert re.search(rf"^ARG {arg}", text, re.M)
    assert "org.opencontainers.image.version" in text and "org.opencontainers.image.revision" in text
    assert "gunicorn" in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:6] == [
        "*",
        "!Dockerfile",
        "!serving/",
        "!tools/",
        "!bundle/",
        "!wheels/",
    ]


def test_healthcheck_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.healthcheck import health_url

    monkeypatch.setenv("LOANRISK_BIND", "0.0.0.0:9000")
    assert health_url() == "http://127.0.0.1:9000/health"
    monkeypatch.delenv("LOANRISK_BIND")
    monkeypatch.setenv("PORT", "7000")
    assert health_url() == "http://127.0.0.1:7000/health"


def test_strip_elf_tail_keeps_an_extension_importable(tmp_path: Path) -> None:
    import orjson

    from tasks.release.prune import strip_elf_tail

    package = Path(orjson.__file__).parent
    copy = tmp_path / "orjson"
    shutil.copytree(package, copy)
    (so,) = [p for p in copy.glob("*.so")]
    before = so.stat().st_size
    saved = strip_elf_tail(so)
    assert saved > 0 and so.stat().st_size == before - saved
    assert strip_elf_tail(so) == 0  # nothing left to cut
    code = "import orjson; assert orjson.loads(orjson.dumps({'a': [1, 2.5]})) == {'a': [1, 2.5]}; print(orjson.__file__)"
    proc = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(tmp_path))
    text = tmp_path / "plain.txt"
    text.write_text("not an ELF file")
    assert strip_elf_tail(text) == 0


PER_BUILD_ARGS = {"BUILD_ID", "MODEL_NAME", "MODEL_VERSION", "GIT_COMMIT"}


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.training"])
def test_the_environment_layers_come_before_anything_that_changes_per_build(name: str) -> None:
    """In every stage, the virtual environment's install (or its copy from the build stage) comes before any
    per-build argument or label: an ARG in scope or a LABEL above it would miss the builder's cache, so every
    release would rebuild the environment and push its ~200 MB layer again."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            stages.append([])
        elif line and not line.startswith("#") and stages:
            stages[-1].append(line)
    checked = 0
    for lines in stages:
        venv = [
            i for i, line in enumerate(lines) if "/opt/venv" in line and line.split()[0] in ("RUN", "COPY")
        ]
        if not venv:
            continue
        checked += 1
        before = lines[: venv[0] + 1]
        per_build = [
            line
            for line in before
            if line.startswith("ARG ") and line.split()[1].split("=")[0] in PER_BUILD_ARGS
        ]
        labels = [line for line in before if line.startswith("LABEL ")]
        assert not per_build and not labels, f"{name}: before the environment layer: {per_build + labels}"
    assert checked == 2, f"{name}: expected a build stage and a final stage that both hold /opt/venv"
