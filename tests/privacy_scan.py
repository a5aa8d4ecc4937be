"""Search bytes, folders, tar archives and Docker images for the personal and identifier values of a dataset.

:class:`KnownValues` reads every ``anon_ssn``, ``loanId``, ``clarityFraudId`` and ``underwritingid`` of a folder
of source files. :class:`Scan` then looks for them anywhere: a value counts as found when its exact text stands in
the bytes, embedded in longer text included (hex runs are searched window by window, so an id inside a longer
hex string is found too). Candidate tokens are found with two regular expressions (hex runs of 24+ characters,
and loan-id shapes) and checked against the sets, so the search is linear in the bytes however many values
there are.
"""

from __future__ import annotations

import csv
import io
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_HEX_RUN = re.compile(rb"[0-9a-fA-F]{24,}")
_LOAN_ID = re.compile(rb"L[A-Z]-[A-Z]-\d{8}")
_HEX_WIDTHS = (24, 32)  # clarityFraudId / underwritingid, anon_ssn


@dataclass(frozen=True)
class KnownValues:
    """The values that must never leave the feature boundary, by kind."""

    anon_ssn: frozenset[bytes]
    loan_id: frozenset[bytes]
    clarity_id: frozenset[bytes]

    @classmethod
    def from_source(cls, folder: Path) -> KnownValues:
        """Every non-empty value of the identifier columns of ``loan.csv``, ``payment.csv`` and the clarity file."""

        def column(name: str, *columns: str) -> set[bytes]:
            with (folder / name).open(newline="") as fh:
                return {row[c].encode() for row in csv.DictReader(fh) for c in columns if row.get(c)}

        return cls(
            anon_ssn=frozenset(v.lower() for v in column("loan.csv", "anon_ssn")),
            loan_id=frozenset(column("loan.csv", "loanId") | column("payment.csv", "loanId")),
            clarity_id=frozenset(
                v.lower()
                for v in column("loan.csv", "clarityFraudId")
                | column("clarity_underwriting_variables.csv", "underwritingid")
            ),
        )

    def kind_of_hex(self, token: bytes) -> str | None:
        if token in self.anon_ssn:
            return "anon_ssn"
        if token in self.clarity_id:
            return "clarityFraudId"
        return None

    def hits(self, data: bytes) -> Iterator[tuple[str, bytes]]:
        """(kind, value) for every occurrence of a known value in ``data``."""
        for match in _LOAN_ID.finditer(data):
            if match.group() in self.loan_id:
                yield "loanId", match.group()
        for match in _HEX_RUN.finditer(data):
            run = match.group().lower()
            for width in _HEX_WIDTHS:
                for start in range(len(run) - width + 1):
                    token = run[start : start + width]
                    kind = self.kind_of_hex(token)
                    if kind is not None:
                        yield kind, token


@dataclass
class Scan:
    """Accumulated search results: what was searched, and every hit with where it was."""

    known: KnownValues
    files: int = 0
    bytes: int = 0
    layers: int = 0
    hits: list[tuple[str, str, str]] = field(default_factory=list)  # (where, kind, value)
    by_place: Counter = field(default_factory=Counter)  # place label -> files searched

    def data(self, where: str, data: bytes, place: str = "") -> None:
        self.files += 1
        self.bytes += len(data)
        self.by_place[place or where] += 1
        for kind, value in self.known.hits(data):
            self.hits.append((where, kind, value.decode()))

    def tree(self, root: Path, place: str, skip: Iterable[Path] = ()) -> None:
        """Every regular file under ``root`` (symlinks not followed), except those under ``skip``."""
        skipped = [p.resolve() for p in skip]
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            resolved = path.resolve()
            if any(resolved.is_relative_to(s) for s in skipped):
                continue
            self.data(str(path), path.read_bytes(), place)

    def tar(self, where: str, fileobj: io.IOBase | None = None, path: Path | None = None) -> None:
        """Every member of a tar archive (any compression); members that are tar archives are opened too."""
        with tarfile.open(name=str(path) if path else None, fileobj=fileobj, mode="r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                data = handle.read()
                name = f"{where}!{member.name}"
                if _is_tar(data):
                    self.layers += 1
                    self.tar(name, fileobj=io.BytesIO(data))
                else:
                    self.data(name, data, "image")

    def summary(self) -> str:
        kinds = Counter(kind for _, kind, _ in self.hits)
        places = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_place.items()))
        return (
            f"{self.files} files, {self.bytes / 1e6:.1f} MB, {self.layers} image layers searched ({places}); "
            f"hits: {dict(kinds) or 0}"
        )


def _is_tar(data: bytes) -> bool:
    """A tar archive, plain (``ustar`` at 257) or gzip/bzip2/xz-compressed and holding one."""
    if len(data) > 262 and data[257:262] == b"ustar":
        return True
    if data[:2] == b"\x1f\x8b" or data[:3] == b"BZh" or data[:6] == b"\xfd7zXZ\x00":
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
                return archive.next() is not None
        except (tarfile.TarError, OSError, EOFError):
            return False
    return False
