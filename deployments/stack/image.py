"""The training image (``Dockerfile.training``) each flow run of the ``docker`` work pool runs in.

python -m deployments.stack.image [--tag loan-risk-training:latest] [--base-image IMG] [--wheel-cache DIR]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tasks.release.build import build_image, git_commit
from tasks.release.build_context import download_wheels
from tasks.release.engine import get_client

logger = logging.getLogger("deployments.stack.image")

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile.training"
# the image's /app (Dockerfile and .dockerignore: the serving image a worker in it builds when it deploys)
APP_DIRS = ("flows", "tasks", "serving", "deployments")
APP_FILES = ("prefect.yaml", "pyproject.toml", "Dockerfile", ".dockerignore")
DEFAULT_TAG = "loan-risk-training:latest"
_IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".env", "*.htpasswd", "secrets"
)


# The oldest interpreter the image may have: Debian bookworm's 3.11.2 (the official slim image has a newer
# 3.11.x). The lock's markers are settled for it, so a package only older 3.11 releases need (async-timeout)
# is in wheels/; pip downloads the wheels for "3.11", which reads such markers as false.
TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def settle_markers(text: str) -> str:
    """The requirement lines that apply to :data:`TARGET`, without their markers."""
    from packaging.markers import Marker

    lines = (line.split("#", 1)[0].partition(";") for line in text.splitlines())
    kept = [
        r.strip() for r, _, m in lines if r.strip() and (not m.strip() or Marker(m.strip()).evaluate(TARGET))
    ]
    return "\n".join(kept) + "\n"


def export_requirements(out: Path) -> Path:
    """``uv export`` of the locked runtime dependencies (no dev group, no hashes: pip installs from wheels/),
    markers settled for the image."""
    if not (uv := shutil.which("uv")):
        raise RuntimeError("uv is not on PATH: pip install uv")
    cmd = [uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--no-header", "-q"]
    cmd += ["-o", str(out)]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=300)
    out.write_text(settle_markers(out.read_text()))
    return out


def _readable(folder: Path) -> None:
    """Every file 0644 and folder 0755 under ``folder`` (read by the image's uid 10001)."""
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def prepare_context(out: Path, wheel_cache: Path) -> Path:
    """Lay out the training image's build context in ``out`` (emptied first)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wheels = download_wheels(wheel_cache, export_requirements(out / "requirements.txt"))
    shutil.copy2(DOCKERFILE, out / "Dockerfile.training")
    (out / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
    for part in APP_DIRS:
        shutil.copytree(REPO_ROOT / part, out / "app" / part, ignore=_IGNORE)
    for part in APP_FILES:
        shutil.copy2(REPO_ROOT / part, out / "app" / part)
    _readable(out / "app")
    shutil.copytree(wheels, out / "wheels", ignore=shutil.ignore_patterns(".*"))
    # the serving image's wheels, as its build context wants them (a worker's deploy downloads nothing)
    serving = download_wheels(wheel_cache)
    shutil.copytree(serving, out / "serving-wheels" / serving.name)
    _readable(out / "serving-wheels")
    return out


def build(tag: str = DEFAULT_TAG, base_image: str | None = None, wheel_cache: Path | None = None) -> str:
    """Build the training image ``tag`` on the engine ``DOCKER_HOST`` names; returns the image id."""
    repository, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
    with tempfile.TemporaryDirectory(prefix="loanrisk-training-context-") as tmp:
        context = prepare_context(Path(tmp) / "context", wheel_cache or REPO_ROOT / ".state" / "wheels")
        buildargs = {"GIT_COMMIT": git_commit()} | ({"BASE_IMAGE": base_image} if base_image else {})
        return build_image(
            context, repository, [version], buildargs, client=get_client(), dockerfile="Dockerfile.training"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.stack.image", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--base-image", default=None, help="default: the Dockerfile's (python:3.11-slim)")
    parser.add_argument("--wheel-cache", type=Path, default=None, help="default: <repo>/.state/wheels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[image] %(message)s", stream=sys.stderr)
    print(build(args.tag, args.base_image, args.wheel_cache), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
