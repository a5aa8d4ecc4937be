"""One scoring request: the model it is scored by, its records scored two ways, their reasons, and the log.

Used by the routes (:mod:`serving.routes`, on Flask's path) and the fast lane (:mod:`serving.lane`) alike.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from serving.batches import FastBatch
from serving.config import ServiceConfig
from serving.features import FeatureError
from serving.model import ServedModel
from serving.payloads import feature_error
from serving.reasons import Column, ModelInput, explain_selected


class Scoring:
    """One scoring request, on Flask's path or the fast lane's (:mod:`serving.lane`): the served model, the
    settings, the prediction log, and ``state`` where the access line's fields go (Flask's ``g``, or the
    lane's own). The records it scored reach the prediction log only on :meth:`commit`, once the answer is
    built: a request answered with an error logs nothing, and the lane may hand any request to Flask."""

    def __init__(
        self, served: ServedModel, config: ServiceConfig, log: Any, state: Any, endpoint: str
    ) -> None:
        self.served, self.config, self.log, self.state, self.endpoint = served, config, log, state, endpoint
        self._pending: tuple[Any, ...] | None = None

    def score(self, records: list[Any]) -> tuple[list[float], ModelInput]:
        """The checked way: the records scored (a bad field is a 4xx naming it and its index), and counted;
        with the model input the probabilities came from (for reasons)."""
        try:
            model_input = self.served.bundle.model_input(records)
        except FeatureError as exc:
            raise feature_error(exc) from None
        probabilities = self.served.bundle.predict_input(model_input)
        self._scored(model_input, probabilities, lambda: [r.get("loanId") for r in records], len(records))
        return probabilities, model_input

    def score_fast(self, batch: FastBatch | None) -> tuple[list[float], ModelInput] | None:
        """The fast way: a decoded batch scored column by column, and counted; None when the checked way must
        take it (no batch, too few records to gain, or a value a reader refuses: the checked way names it)."""
        model_input = None if batch is None else self.served.bundle.fast_input(batch.column, batch.size)
        if batch is None or model_input is None:
            return None
        probabilities = self.served.bundle.predict_input(model_input)
        self._scored(model_input, probabilities, partial(batch.column, "loanId"), batch.size)
        return probabilities, model_input

    def _scored(self, model_input: ModelInput, probabilities: list[float], ids: Any, n: int) -> None:
        self.state.rows = n
        if self.log is not None:
            self._pending = (model_input, probabilities, ids, n)

    def reasons(
        self, scored: tuple[list[float], ModelInput], options: tuple[str, int], raw: Column
    ) -> list[Any] | None:
        """Each record's reasons (None where the request's ``reasons`` does not select it), or None for none."""
        probabilities, model_input = scored
        served = self.served
        return explain_selected(served.bundle, model_input, probabilities, served.threshold, *options, raw)

    def commit(self) -> None:
        """Queue what was scored in the prediction log (when the service keeps one)."""
        if self._pending is not None:
            self.log.submit(self.served, self.endpoint, self.state.request_id, *self._pending)
            self._pending = None
