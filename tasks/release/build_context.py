"""A self-contained Docker build context for the serving image; wheels are downloaded on the host (PyPI is
unreachable from containers), cached by requirements hash."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tasks.release.engine import DeployStepError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PRUNE = Path(__file__).resolve().with_name("prune.py")  # a build-stage tool: copied into the context's tools/
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SERVING_DIR = REPO_ROOT / "serving"
REQUIREMENTS = SERVING_DIR / "requirements.txt"

PYTHON_VERSION = "3.11"
# Debian bookworm has glibc 2.36: manylinux_2_28 and older (manylinux2014 = 2_17) wheels all run on it.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
COMPLETE_MARKER = ".complete"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".ruff_cache")


def requirements_hash(requirements: Path = REQUIREMENTS) -> str:
    """Hash of the requirement lines (comments and blank lines aside) and the target platform."""
    lines = [ln.split("#", 1)[0].strip().lower() for ln in requirements.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    spec = "\n".join(sorted(lines)) + f"\npython={PYTHON_VERSION}\nplatforms={','.join(PLATFORMS)}\n"
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _pip_works(command: list[str]) -> bool:
    try:
        return subprocess.run([*command, "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pip_command(helper_dir: Path) -> list[str]:
    """A working pip: this interpreter's, else python3's on PATH, else one in a helper venv (ensurepip)."""
    candidates = [[python, "-m", "pip"] for python in (sys.executable, shutil.which("python3")) if python]
    if works := next((command for command in candidates if _pip_works(command)), None):
        return works
    venv_python = helper_dir / "bin" / "python"
    if not venv_python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(helper_dir)], check=True, capture_output=True)
    command = [str(venv_python), "-m", "pip"]
    if not _pip_works(command):
        raise DeployStepError(
            "export", f"no working pip found (tried {candidates} and a venv in {helper_dir})"
        )
    return command


def download_wheels(wheel_cache_dir: str | Path, requirements: Path = REQUIREMENTS) -> Path:
    """The folder of wheels for ``requirements``, downloaded on first use and cached by requirements hash; one
    process downloads while the others sharing the cache wait for it (deploys on one machine)."""
    cache = Path(wheel_cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / requirements_hash(requirements)
    if (target / COMPLETE_MARKER).is_file():
        return target
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        if (target / COMPLETE_MARKER).is_file():
            return target
        return _download(cache, target, requirements)


def _download(cache: Path, target: Path, requirements: Path) -> Path:
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
    try:
        command = [
            *pip_command(cache / ".pip-venv"),
            "download",
            "--only-binary=:all:",
            "--no-deps",
            *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
            "--python-version",
            PYTHON_VERSION,
            "-r",
            str(requirements),
            "-d",
            str(partial),
        ]
        logger.info("downloading serving wheels into %s", target)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise DeployStepError(
                "export", f"pip download failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        wheels = sorted(p.name for p in partial.glob("*.whl"))
        (partial / COMPLETE_MARKER).write_text("\n".join(wheels) + "\n")
        if not target.exists():  # else another process finished first (and ``partial`` goes below)
            os.replace(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def prepare_build_context(bundle_dir: str | Path, out_dir: str | Path, wheel_cache_dir: str | Path) -> Path:
    """Lay out a fresh build context in ``out_dir`` (emptied first) and return it."""
    bundle = Path(bundle_dir)
    if not (bundle / "model.cbm").is_file() or not (bundle / "bundle.json").is_file():
        raise DeployStepError("export", f"{bundle} is not a model bundle (needs model.cbm and bundle.json)")
    wheels = download_wheels(wheel_cache_dir)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(DOCKERFILE, out / "Dockerfile")
    if DOCKERIGNORE.is_file():
        shutil.copy2(DOCKERIGNORE, out / ".dockerignore")
    shutil.copytree(SERVING_DIR, out / "serving", ignore=_IGNORE)
    (out / "tools").mkdir()
    shutil.copy2(PRUNE, out / "tools" / PRUNE.name)
    shutil.copytree(bundle, out / "bundle", ignore=_IGNORE)
    for path in (out / "bundle").rglob("*"):  # the image's non-root user must read what training wrote 0600
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.copytree(wheels, out / "wheels", copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".*"))
    return out
