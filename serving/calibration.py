"""The probability calibrator a bundle may carry, as plain numbers (no pickle): ``isotonic`` breakpoints
(:func:`numpy.interp`) or ``platt``; every serving path and training's metrics go through :meth:`apply`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("isotonic", "platt")
_EPS = 1e-15


@dataclass(frozen=True)
class Calibrator:
    method: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    a: float = 1.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibrator method must be one of {METHODS}, got {self.method!r}")
        xs = np.asarray(self.x, dtype=float)
        if self.method == "isotonic" and (len(xs) == 0 or len(xs) != len(self.y) or np.any(np.diff(xs) < 0)):
            raise ValueError("isotonic calibrator: 'x' and 'y' must be equally long, non-empty, x ascending")

    @staticmethod
    def logit(p: Any) -> np.ndarray:
        q = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
        return np.log(q / (1 - q))

    def apply(self, p: Any) -> np.ndarray:
        """Calibrated probabilities of ``p`` (any array-like of probabilities)."""
        p = np.asarray(p, dtype=float)
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        return 1.0 / (1.0 + np.exp(-(self.a * self.logit(p) + self.b)))

    def to_dict(self) -> dict[str, Any]:
        keep = ("x", "y") if self.method == "isotonic" else ("a", "b")
        return {"method": self.method, **{k: getattr(self, k) for k in keep}}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibrator | None:
        """The calibrator stored in a bundle's metadata; None when there is none."""
        return cls(**{k: data[k] for k in ("method", "x", "y", "a", "b") if k in data}) if data else None
