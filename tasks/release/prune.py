"""Slim the serving venv in the image's build stage, then prove it still serves the bundle.

Drops installers, ``tests`` folders, the SciPy/pandas/NumPy/CatBoost subpackages a probe run never imports,
SciPy's bundled BLAS/Fortran libraries, and the symbol tables of very large shared objects (as ``sstrip``
does). When the probe then fails, all but the first step is put back; exit code 1 only when the untouched
environment fails too."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable
from pathlib import Path

STRIP_MIN_BYTES = 16 * 2**20
PRUNABLE_PACKAGES = ("scipy", "pandas", "numpy", "catboost")
VENDORED_LIBS = ("scipy.libs",)
INSTALLERS = ("pip", "setuptools", "wheel", "pkg_resources", "_distutils_hack", "distutils-precedence.pth")

PROBE = r"""
import json, sys
from serving.app import create_app
from serving.config import ServiceConfig
from serving.bundle import load_bundle

bundle_dir = sys.argv[1]
app = create_app(ServiceConfig(bundle_dir=bundle_dir, log_level="WARNING"))
client = app.test_client()
assert client.get("/health").status_code == 200, client.get("/health").data
reference = load_bundle(bundle_dir).reference() or {}
records = (reference.get("records") or [{}])[:20]
for record in records[:3]:
    r = client.post("/predict", json=record)
    assert r.status_code == 200, r.data
r = client.post("/predict/batch", json={"data": records})
assert r.status_code == 200, r.data
r = client.post("/invocations", json={"dataframe_records": records})
assert r.status_code == 200, r.data
assert client.post("/predict", json={"apr": "abc"}).status_code == 422
assert client.get("/metrics").status_code == 200
print(json.dumps(sorted(name for name in sys.modules)))
"""


def probe(bundle_dir: Path, cwd: Path) -> list[str] | None:
    """Modules loaded while serving the bundle in a fresh interpreter, or None when serving failed."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(bundle_dir)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        sys.stderr.write(f"probe failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(paths: Iterable[Path]) -> int:
    """Delete each of ``paths`` (a folder or a file); returns the bytes freed."""
    freed = 0
    for path in paths:
        freed += _size(path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return freed


def remove_installers(site: Path) -> int:
    for script in (Path(sys.prefix) / "bin").glob("pip*"):
        script.unlink()
    return _remove([e for e in site.iterdir() if e.name.split("-")[0] in INSTALLERS or e.name in INSTALLERS])


def remove_tests(site: Path) -> int:
    tests = sorted(site.rglob("tests"), key=lambda p: len(p.parts))
    return _remove(path for path in tests if path.is_dir() and path.exists())


def unused_subpackages(site: Path, loaded: set[str]) -> list[Path]:
    """Package folders under the prunable packages whose module was never imported by the probe."""
    out: list[Path] = []

    def walk(folder: Path, dotted: str) -> None:
        for child in sorted(folder.iterdir()):
            if not child.is_dir() or not (child / "__init__.py").exists():
                continue
            name = f"{dotted}.{child.name}"
            if name in loaded:
                walk(child, name)
            else:
                out.append(child)

    for package in PRUNABLE_PACKAGES:
        root = site / package
        if root.is_dir() and package in loaded:
            walk(root, package)
    return out


def strip_elf_tail(path: Path) -> int:
    """Cut an ELF64 little-endian file after its last segment (symbol tables, debug info, section headers);
    returns the bytes saved, 0 (untouched) for anything else or when the section headers lie inside a segment."""
    with path.open("r+b") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return 0
        e_phoff, e_shoff = struct.unpack_from("<QQ", header, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(e_phoff)
        table = f.read(e_phentsize * e_phnum)
        end = e_phoff + e_phentsize * e_phnum
        for i in range(e_phnum):
            (p_offset,) = struct.unpack_from("<Q", table, i * e_phentsize + 8)
            (p_filesz,) = struct.unpack_from("<Q", table, i * e_phentsize + 32)
            end = max(end, p_offset + p_filesz)
        size = os.fstat(f.fileno()).st_size
        if end >= size or e_shoff < end:
            return 0
        f.seek(0x28)
        f.write(struct.pack("<Q", 0))  # e_shoff: no section header table
        f.seek(0x3C)
        f.write(struct.pack("<HH", 0, 0))  # e_shnum, e_shstrndx
        f.truncate(end)
        return size - end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--site", type=Path, help="site-packages to slim (default: this venv's)")
    parser.add_argument("--app-root", type=Path, default=Path(__file__).resolve().parents[2])
    args = parser.parse_args(argv)
    site = args.site or Path(sysconfig.get_paths()["purelib"])

    loaded = probe(args.bundle, args.app_root)
    if loaded is None:
        sys.stderr.write("the service does not work in this environment, before any pruning\n")
        return 1
    freed = remove_installers(site) + remove_tests(site)

    # SciPy's bundled BLAS/LAPACK/Fortran runtimes: scipy.sparse does not link them (NumPy's are kept)
    vendored = [p for p in (site / name for name in VENDORED_LIBS) if p.is_dir()]
    candidates = unused_subpackages(site, set(loaded)) + vendored
    trash = Path(tempfile.mkdtemp(prefix="prune-"))
    moved = [(path, trash / f"{i}-{path.name}") for i, path in enumerate(candidates)]  # (original, moved to)
    for original, target in moved:
        shutil.move(str(original), target)
    stripped: list[tuple[Path, Path]] = []
    large = sorted(p for p in site.rglob("*.so") if p.is_file() and p.stat().st_size >= STRIP_MIN_BYTES)
    for i, path in enumerate(large):
        backup = trash / f"so-{i}-{path.name}"
        shutil.copy2(path, backup)
        if strip_elf_tail(path):
            stripped.append((path, backup))
    if probe(args.bundle, args.app_root) is None:
        sys.stderr.write("slimmed environment failed the probe: restoring what was removed or stripped\n")
        for original, target in moved + stripped:
            shutil.move(str(target), original)
        if probe(args.bundle, args.app_root) is None:
            return 1
        moved, stripped = [], []
    freed += sum(_size(target) for _, target in moved)
    freed += sum(_size(backup) - _size(original) for original, backup in stripped)
    shutil.rmtree(trash, ignore_errors=True)
    removed = [str(original.relative_to(site)) for original, _ in moved]
    slimmed = [str(original.relative_to(site)) for original, _ in stripped]
    print(json.dumps({"freed_mb": round(freed / 2**20, 1), "removed": removed, "stripped": slimmed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
