"""Drift: shifted populations of applicants (``--drift NAME``) for the monitoring tests and demos: ``lead-mix``
(half of ``bvMandatory`` become ``lead``), ``apr`` (30% higher), ``fraud-score`` (150 points lower), or all three
(``applicants``). Applied to the finished tables with a generator of its own, so nothing else moves."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Tables = dict[str, dict[str, np.ndarray]]


def _lead_mix(rng: np.random.Generator, tables: Tables) -> None:
    lead = tables["loan"]["leadType"].copy()
    moved = (lead == "bvMandatory") & (rng.random(len(lead)) < 0.5)
    lead[moved] = "lead"
    tables["loan"]["leadType"] = lead


def _apr(rng: np.random.Generator, tables: Tables) -> None:
    apr = tables["loan"]["apr"].astype(float)
    tables["loan"]["apr"] = np.minimum(np.round(apr * 1.3, 2), 1_000.0)


def _fraud_score(rng: np.random.Generator, tables: Tables) -> None:
    score = tables["clarity"]["clearfraudscore"].astype(float)
    tables["clarity"]["clearfraudscore"] = np.maximum(score - 150.0, 0.0)


SHIFTS: dict[str, tuple[Callable[[np.random.Generator, Tables], None], ...]] = {
    "lead-mix": (_lead_mix,),
    "apr": (_apr,),
    "fraud-score": (_fraud_score,),
    "applicants": (_lead_mix, _apr, _fraud_score),
}
# The source fields each drift moves (what a monitor should flag).
SHIFTED_FIELDS: dict[str, frozenset[str]] = {
    "lead-mix": frozenset({"leadType"}),
    "apr": frozenset({"apr"}),
    "fraud-score": frozenset({"clearfraudscore"}),
    "applicants": frozenset({"leadType", "apr", "clearfraudscore"}),
}


def apply_drift(tables: Tables, name: str, seed: int) -> Tables:
    """Shift ``tables`` (as :func:`~tasks.data.sample.assembly.build_tables` returns them) by the drift ``name``."""
    if name not in SHIFTS:
        raise ValueError(f"unknown drift {name!r}; known: {sorted(SHIFTS)}")
    rng = np.random.default_rng([seed, 0xD21F7])
    for shift in SHIFTS[name]:
        shift(rng, tables)
    return tables
