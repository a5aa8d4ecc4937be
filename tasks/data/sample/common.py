"""Shared pieces of the sample generator: the time frame, row-count scaling and vectorised drawing helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASE_ROWS = {"loan": 577_682, "payment": 689_364, "clarity": 49_752}
DAY = 86_400.0
T_START = np.datetime64("2014-12-03T00:00:00", "s")
T_END = np.datetime64("2017-03-18T23:59:59", "s")
SNAPSHOT = np.datetime64("2017-03-18", "D")
LAST_PAYMENT = np.datetime64("2021-02-26", "D")
EPOCH = np.datetime64("1970-01-01T00:00:00", "s")


@dataclass(frozen=True)
class Plan:
    """Row-count scaling: ``n(base)`` is ``round(f * base)`` (at least ``minimum``)."""

    f: float

    def n(self, base: float, minimum: int = 0) -> int:
        return max(minimum, int(round(base * self.f)))


def fit_total(rng: np.random.Generator, counts: np.ndarray, target: int, hi: int | np.ndarray) -> np.ndarray:
    """``counts`` (integers in [1, hi]) nudged by one at random until they sum to ``target`` (or stuck)."""
    diff = target - int(counts.sum())
    while diff != 0:
        room = np.flatnonzero(counts < hi) if diff > 0 else np.flatnonzero(counts > 1)
        if len(room) == 0:
            break
        counts[rng.choice(room, size=min(abs(diff), len(room)), replace=False)] += int(np.sign(diff))
        diff = target - int(counts.sum())
    return counts


def choice(rng: np.random.Generator, levels: dict, n: int) -> np.ndarray:
    """``n`` draws from ``levels`` (value -> weight)."""
    values = np.array(list(levels))
    p = np.array(list(levels.values()), dtype=float)
    return values[rng.choice(len(values), size=n, p=p / p.sum())]


_HEX = np.frombuffer(b"0123456789abcdef", dtype="S1")


def hex_random(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """``n`` random lowercase hex strings of ``width`` characters."""
    nib = rng.integers(0, 16, size=(n, width), dtype=np.uint8)
    return np.ascontiguousarray(_HEX[nib]).view(f"S{width}").ravel().astype(str)


def digits(values: np.ndarray, width: int, base: int = 10) -> np.ndarray:
    """Zero-padded decimal (or lowercase hex, ``base=16``) strings of non-negative integers."""
    powers = base ** np.arange(width - 1, -1, -1, dtype=np.int64)
    idx = (values.astype(np.int64)[:, None] // powers) % base
    return np.ascontiguousarray(_HEX[idx]).view(f"S{width}").ravel().astype(str)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
