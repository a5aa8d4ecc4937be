"""The records of one request once decoded: the valid ones, read a column at a time, and an error per refused one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec.structs import astuple

from serving.contract import KNOWN_FIELDS
from serving.errors import ApiError

FIELDS = sorted(KNOWN_FIELDS)  # the request model's fields, in its slots' order
_NOTHING = (None,)


class Decoded:
    """The records of one request: the valid ones (read a column at a time), and an error per refused one."""

    def __init__(self, size: int, params: Any = None) -> None:
        self.size, self.params = size, params
        self.records: list[Any] = []  # LoanApplication structs, in request order
        self.positions: list[int] = []  # each one's index in the request
        self.errors: list[ApiError] = []  # one per refused record, by index
        self.unknown: set[str] = set()
        self._columns: dict[str, Sequence[Any]] | None = None
        self._kept: list[int] | None = None  # after keep(): the kept records' places in the columns

    def add(self, index: int, record: Any) -> None:
        if isinstance(record, ApiError):
            self.errors.append(record)
        else:
            self.records.append(record)
            self.positions.append(index)

    def column(self, name: str) -> Sequence[Any]:
        """The valid records' values of one field (None where absent)."""
        if self._columns is None:  # every field at once: one C-level transpose of the structs' slots
            rows = map(astuple, self.records)
            self._columns = dict(zip(FIELDS, zip(*rows, strict=True), strict=True)) if self.records else {}
        if (values := self._columns.get(name)) is None:
            return _NOTHING * len(self.records)
        return values if self._kept is None else [values[i] for i in self._kept]

    def keep(self, positions: Sequence[int], errors: Sequence[ApiError]) -> None:
        """Keep only the records at ``positions``; ``errors`` are the others'."""
        self.column("loanId")  # transposed once, before the records are picked
        self._kept = list(positions) if self._kept is None else [self._kept[i] for i in positions]
        self.records = [self.records[i] for i in positions]
        self.positions = [self.positions[i] for i in positions]
        self.errors = sorted([*self.errors, *errors], key=lambda e: e.index or 0)

    def loan_ids(self) -> list[Any]:
        """Each valid record's ``loanId`` to echo (a number as its text); UNSET where it sent none."""
        return [
            v if v is msgspec.UNSET or v is None or type(v) is str else str(v) for v in self.column("loanId")
        ]
