"""The service's one error type: a client's mistake (or the service's fault) answered as JSON."""

from __future__ import annotations

from typing import Any

from serving.readers import FeatureError


class ApiError(Exception):
    """A 4xx (or, for the service's own faults, 5xx) answer; ``extra`` adds fields to its body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        index: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.index, self.headers, self.extra = field, index, headers, extra

    def entry(self) -> dict[str, Any]:
        """The error as one entry of a batch answer's ``errors``."""
        return {"index": self.index, "field": self.field, "error": self.code, "message": self.message}


def feature_error(exc: FeatureError, index: int | None = None) -> ApiError:
    """A value the feature code refused, as a 422 naming the record (its index in the request) and field."""
    idx = exc.index if index is None else index
    where = f"record {idx}, " if idx is not None else ""
    return ApiError(422, "invalid_value", f"{where}field '{exc.field}': {exc.message}", exc.field, idx)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)
