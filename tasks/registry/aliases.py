"""The registry's alias names, defined once: ``candidate`` (the version the gate promoted, waiting for its deploy)
and ``champion`` (the version that serves; only a recorded release moves it)."""

from __future__ import annotations

from enum import StrEnum


class Alias(StrEnum):
    CANDIDATE = "candidate"
    CHAMPION = "champion"

    def __repr__(self) -> str:  # messages name the alias as the registry does: 'champion'
        return repr(self.value)
