"""The pipeline's one error hierarchy: every failure a stage raises on purpose is one of three kinds.

A retry tells them apart (:func:`tasks.common.retry_unless_permanent`): a transient failure is retried, a
permanent one and bad input are not. A flow wraps a stage's failure once, at its boundary, and says which stage.
"""

from __future__ import annotations


class LoanRiskError(RuntimeError):
    """Root of the pipeline's own errors."""


class PermanentError(LoanRiskError):
    """A failure that a retry cannot fix (a missing file or revision, a refused push, a policy decision)."""


class TransientError(LoanRiskError):
    """A failure that a retry may fix (a server that did not answer or answered with an error)."""


class BadInputError(PermanentError):
    """Input that breaks the dataset or request contract; the message names the file, column, row or field."""
