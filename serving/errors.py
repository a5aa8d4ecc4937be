"""The service's errors: an HTTP answer, a refused value (bad input), and a bundle that cannot serve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class ApiError(Exception):
    """A 4xx (or, for the service's own faults, 5xx) answer; ``extra`` adds fields to its body."""

    status: int
    code: str
    message: str
    field: str | None = None
    index: int | None = None
    headers: dict[str, str] | None = None
    extra: dict[str, Any] | None = None

    def __str__(self) -> str:
        return self.message

    def entry(self) -> dict[str, Any]:
        """The error as one entry of a batch answer's ``errors``."""
        return {"index": self.index, "field": self.field, "error": self.code, "message": self.message}


@dataclass(eq=False)
class FeatureError(ValueError):
    """A field of a record cannot be read; names the field (and the record index when known)."""

    field: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        return f"{'' if self.index is None else f'record {self.index}, '}field '{self.field}': {self.message}"

    def answer(self, index: int | None = None) -> ApiError:
        """A 422 naming the record (``index``: its place in the request) and the field."""
        at = FeatureError(self.field, self.message, self.index if index is None else index)
        return ApiError(422, "invalid_value", str(at), at.field, at.index)


class BundleError(RuntimeError):
    """A bundle that cannot serve: missing, incomplete, not this code's contract, or a bad reason-code table."""


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
