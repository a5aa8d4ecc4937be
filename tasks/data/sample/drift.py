"""Drift: shifted populations of applicants (``--drift NAME``) for the monitoring tests and demos:
``lead-mix`` (half of ``bvMandatory`` become ``lead``), ``apr`` (30% higher), ``fraud-score`` (150 points
lower), or all three (``applicants``). Applied to the finished tables with a generator of its own, so
nothing else moves."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Tables = dict[str, dict[str, np.ndarray]]


def _lead_mix(rng: np.random.Generator, lead: np.ndarray) -> np.ndarray:
    return np.where((lead == "bvMandatory") & (rng.random(len(lead)) < 0.5), "lead", lead)


def _apr(rng: np.random.Generator, apr: np.ndarray) -> np.ndarray:
    return np.minimum(np.round(apr.astype(float) * 1.3, 2), 1_000.0)


def _fraud_score(rng: np.random.Generator, score: np.ndarray) -> np.ndarray:
    return np.maximum(score.astype(float) - 150.0, 0.0)


# Each move: the file and field it shifts, and how.
MOVES: dict[str, tuple[str, str, Callable[[np.random.Generator, np.ndarray], np.ndarray]]] = {
    "lead-mix": ("loan", "leadType", _lead_mix),
    "apr": ("loan", "apr", _apr),
    "fraud-score": ("clarity", "clearfraudscore", _fraud_score),
}
SHIFTS: dict[str, tuple[str, ...]] = {**{name: (name,) for name in MOVES}, "applicants": tuple(MOVES)}
# The source fields each drift moves (what a monitor should flag).
SHIFTED_FIELDS: dict[str, frozenset[str]] = {
    name: frozenset(MOVES[m][1] for m in moves) for name, moves in SHIFTS.items()
}


def apply_drift(tables: Tables, name: str, seed: int) -> Tables:
    """Shift ``tables`` (as :func:`~tasks.data.sample.assembly.build_tables` returns them) by the drift ``name``."""
    if name not in SHIFTS:
        raise ValueError(f"unknown drift {name!r}; known: {sorted(SHIFTS)}")
    rng = np.random.default_rng([seed, 0xD21F7])
    for file, column, move in (MOVES[m] for m in SHIFTS[name]):
        tables[file][column] = move(rng, tables[file][column])
    return tables
