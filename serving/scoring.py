"""One scoring request: decoded records → features → CatBoost → reasons, and what reaches the prediction log.

``reject`` answers the request's first error; otherwise refused records are left out, each with its error."""

from __future__ import annotations

from typing import Any

from serving.config import ServiceConfig
from serving.decoded import Decoded
from serving.features import columns_from, outside_contract, take
from serving.model import ServedModel
from serving.readers import FeatureError
from serving.reasons import explain_selected


class Scoring:
    """One request's scoring; what was scored reaches the prediction log only on :meth:`commit`, once the
    answer is built."""

    def __init__(
        self, served: ServedModel, config: ServiceConfig, log: Any, state: Any, endpoint: str, metrics: Any
    ) -> None:
        self.served, self.config, self.log, self.state, self.endpoint = served, config, log, state, endpoint
        self.metrics = metrics
        self._pending: tuple[Any, ...] | None = None
        self.warnings: dict[int, str] = {}  # position among the scored records -> warning

    def score(self, decoded: Decoded, reject: bool) -> tuple[list[float], dict[str, Any]]:
        """Probabilities of the valid records (and the model input they came from, for reasons)."""
        found: dict[int, FeatureError] = {}
        columns = columns_from(decoded.column, len(decoded.records), found)
        unknown = outside_contract(columns)
        if self.config.unknown_categories == "reject":
            for i, exc in unknown:
                found.setdefault(i, exc)
            unknown = []
        if found or (reject and decoded.errors):
            refused = [exc.answer(decoded.positions[i]) for i, exc in sorted(found.items())]
            if reject:  # the first error in record order, whether decoding or the features found it
                raise min((*decoded.errors, *refused), key=lambda e: e.index or 0)
            keep = [i for i in range(len(decoded.records)) if i not in found]
            columns = take(columns, keep)
            decoded.keep(keep, refused)
            kept = {i: k for k, i in enumerate(keep)}
            unknown = [(kept[i], exc) for i, exc in unknown if i in kept]
        self.warnings = {k: f"field '{exc.field}': {exc.message}; scored as unseen" for k, exc in unknown}
        if decoded.errors:
            self.metrics.reject(self.endpoint, decoded.errors)
        n = len(decoded.records)
        probabilities = self.served.bundle.predict_input(columns) if n else []
        self.state.rows = n
        if self.log is not None and n:
            self._pending = (columns, probabilities, lambda: list(decoded.column("loanId")), n)
        return probabilities, columns

    def reasons(
        self, scored: tuple[list[float], dict[str, Any]], options: tuple[str, int], decoded: Decoded
    ) -> list[Any] | None:
        """Each record's reasons (None where the request's ``reasons`` does not select it), or None for none."""
        probabilities, columns = scored
        if not probabilities:
            return None
        served = self.served
        return explain_selected(
            served.bundle, columns, probabilities, served.threshold, *options, decoded.column
        )

    def commit(self) -> None:
        """Queue what was scored in the prediction log (when the service keeps one)."""
        if self._pending is not None:
            self.log.submit(self.served, self.endpoint, self.state.request_id, *self._pending)
            self._pending = None
