"""Hub errors and retries: transient errors (connection, timeout, HTTP 408/429/5xx, an interrupted transfer) are
retried with exponential backoff; anything else fails at once as a PermanentError naming what is wrong."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tasks.errors import PermanentError

log = logging.getLogger(__name__)

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
MAX_BACKOFF_SECONDS = 60.0

T = TypeVar("T")
LoggerLike = logging.Logger | logging.LoggerAdapter


class HubError(RuntimeError):
    pass


class HubNotFoundError(HubError, PermanentError):
    """The repository, revision or file does not exist (or is private and the token cannot see it)."""


class HubAccessError(HubError, PermanentError):
    """Access refused (401/403, gated repository) or the endpoint does not behave like a Hub."""


class HubIntegrityError(HubError, PermanentError):
    """A downloaded file's checksum differs from the commit's."""


class HubUnavailableError(HubError):
    """Transient errors through every attempt (a later retry may succeed)."""


@dataclass(frozen=True)
class Retry:
    """How transient errors are retried: attempts, the first wait (doubling, capped at a minute), logging."""

    max_attempts: int = 4
    backoff_seconds: float = 1.0
    logger: LoggerLike = log
    sleep: Callable[[float], None] = time.sleep


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` read now (huggingface_hub reads it only at import time), else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _cause(exc: BaseException) -> BaseException:
    """hf_hub_download wraps a failed metadata call in LocalEntryNotFoundError or (forced) ValueError."""
    from huggingface_hub.errors import FileMetadataError, LocalEntryNotFoundError

    cause = exc.__cause__
    wrapped = isinstance(exc, LocalEntryNotFoundError) or (
        type(exc) is ValueError and "Force download failed" in str(exc)
    )
    if wrapped and cause is not None and not isinstance(cause, FileMetadataError):
        return _cause(cause)
    return exc


def is_transient(exc: BaseException) -> bool:
    """Whether an error from huggingface_hub is worth another attempt."""
    import httpx2
    from huggingface_hub.errors import (
        FileMetadataError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    exc = _cause(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status in (408, 429) or (status is not None and status >= 500)
    if isinstance(exc, FileMetadataError | LocalEntryNotFoundError):
        return False  # an endpoint that answers without Hub metadata, or offline with nothing cached
    if isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError):
        return True
    # hf_hub_download's size check after an interrupted transfer
    return isinstance(exc, OSError) and "Consistency check failed" in str(exc)


def permanent_error(
    exc: BaseException, repo_id: str, revision: str, filename: str | None, endpoint: str
) -> PermanentError | None:
    """A PermanentError naming what is missing for a non-transient huggingface_hub error, or None."""
    from huggingface_hub.errors import (
        DisabledRepoError,
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    exc = _cause(exc)
    where = f"dataset repository {repo_id!r} on {endpoint}"
    what = (
        f"file {filename!r} at revision {revision!r} of {where}"
        if filename
        else f"revision {revision!r} of {where}"
    )
    if isinstance(exc, RevisionNotFoundError):
        return HubNotFoundError(f"revision {revision!r} not found in {where}")
    if isinstance(exc, GatedRepoError):
        return HubAccessError(
            f"{where} is gated: accept its conditions on the Hub and set LOANRISK_HF_TOKEN to a token that may read it"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubNotFoundError(
            f"{where} not found (or it is private and LOANRISK_HF_TOKEN is missing or cannot read it)"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubNotFoundError(f"file {filename!r} not found at revision {revision!r} of {where}")
    if isinstance(exc, DisabledRepoError):
        return HubAccessError(f"{where} is disabled")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubAccessError(f"HF_HUB_OFFLINE is set and {what} is not in the local cache")
    if isinstance(exc, LocalEntryNotFoundError) and isinstance(exc.__cause__, FileMetadataError):
        return HubAccessError(
            f"{endpoint} does not answer like a Hugging Face Hub for {what}: {exc.__cause__}"
        )
    if isinstance(exc, FileMetadataError):
        return HubAccessError(f"{endpoint} does not answer like a Hugging Face Hub for {what}: {exc}")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return HubAccessError(f"access to {what} refused (HTTP {status}): check LOANRISK_HF_TOKEN")
        if 400 <= status < 500:
            return HubNotFoundError(f"request for {what} failed with HTTP {status}: {_first_line(exc)}")
    return None


def call_with_retries(
    fn: Callable[[], T], *, describe: str, repo_id: str, revision: str, filename: str | None, retry: Retry
) -> T:
    """Run ``fn``; retry transient Hub errors with exponential backoff; translate permanent ones at once."""
    endpoint = hf_endpoint()
    attempts = max(1, int(retry.max_attempts))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except PermanentError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_transient(exc):
                permanent = permanent_error(exc, repo_id, revision, filename, endpoint)
                if permanent is not None:
                    raise permanent from exc
                raise
            reason = _cause(exc)
            if attempt == attempts:
                raise HubUnavailableError(
                    f"{describe} failed after {attempts} attempt(s) with transient errors; last: "
                    f"{type(reason).__name__}: {_first_line(reason)}"
                ) from exc
            wait = min(MAX_BACKOFF_SECONDS, retry.backoff_seconds * 2 ** (attempt - 1))
            retry.logger.warning(
                "%s failed (attempt %d/%d: %s: %s); retrying in %.2fs",
                describe,
                attempt,
                attempts,
                type(reason).__name__,
                _first_line(reason),
                wait,
            )
            retry.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
