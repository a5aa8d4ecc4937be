"""The Prefect API this process talks to, and whether an error is that API refusing our credentials."""

from __future__ import annotations


def api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect's settings resolve it (None: an ephemeral server)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def is_auth_error(exc: BaseException) -> bool:
    """The server answered 401 or 403."""
    import httpx

    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403)
