"""Start a run of a Prefect deployment over the REST API and, with ``--wait``, follow it to its end.

    python -m deployments.trigger loan-risk-training/retrain --param source=sample --param scale=0.02 \\
        --param n_trials=2 --param deploy=false --wait --timeout 3600

This is what GitHub Actions calls, so it imports no Prefect (plain httpx: it starts in well under a second on a
runner that has only the project's lock file synced). It reads

- ``PREFECT_API_URL``: the API, e.g. ``http://127.0.0.1:4200/api`` or
  ``https://api.prefect.cloud/api/accounts/<a>/workspaces/<w>``;
- ``PREFECT_API_KEY``: a Prefect Cloud API key, sent as ``Authorization: Bearer <key>``;
- ``PREFECT_API_AUTH_STRING``: ``user:pass`` for a self-hosted server started with
  ``PREFECT_SERVER_API_AUTH_STRING``, sent as HTTP Basic (it wins over the key, as in Prefect's own client);
- ``PREFECT_UI_URL`` (optional, self-hosted): where the UI is, for the run's link.

``--param k=v`` values are parsed as JSON when they parse (``2``, ``0.02``, ``false``, ``null``, ``[1,2]``) and
are strings otherwise (``sample``, ``/data/loans``); quote a JSON string to keep it a string (``k='"2"'``).

It prints the run's UI link as soon as the run exists and, last, one JSON line: ``{"id", "name", "deployment",
"state", "state_name", "message", "url", "exit_code", "error"}``. Progress goes to stderr. When
``GITHUB_OUTPUT`` / ``GITHUB_STEP_SUMMARY`` are set (GitHub Actions) it appends the outcome to them too.

Exit codes (see ``ExitCode``): 0 completed (or created, without ``--wait``), 1 failed, 2 usage or configuration
error, 3 crashed, 4 cancelled, 5 timed out while waiting, 6 credentials refused (HTTP 401/403), 7 deployment not
found, 8 other API error or API unreachable after retries.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import Any
from urllib.parse import quote

import httpx

logger = logging.getLogger("deployments.trigger")


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    CRASHED = 3
    CANCELLED = 4
    TIMEOUT = 5
    AUTH = 6
    NOT_FOUND = 7
    API = 8


TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
STATE_EXIT_CODES = {
    "COMPLETED": ExitCode.OK,
    "FAILED": ExitCode.FAILED,
    "CRASHED": ExitCode.CRASHED,
    "CANCELLED": ExitCode.CANCELLED,
}
RETRY_STATUS_CODES = {408, 425, 429, 500, 502, 503, 504}

_CLOUD_API_RE = re.compile(
    r"^(?P<scheme>https?)://(?P<host>[^/]+)/api/accounts/(?P<account>[^/]+)/workspaces/(?P<workspace>[^/]+)$"
)


class TriggerError(Exception):
    """An error that ends the command with ``exit_code``."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.API) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class WaitTimeout(TriggerError):
    """The run did not reach a terminal state in time; ``run`` is the last state read."""

    def __init__(self, message: str, run: dict[str, Any]) -> None:
        super().__init__(message, ExitCode.TIMEOUT)
        self.run = run


# --- pure helpers ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_value(raw: str) -> Any:
    """A ``--param`` value: JSON when it parses as strict JSON, else the string itself."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return raw


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` -> ``(key, parsed value)``; the value may itself contain ``=``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--param expects key=value, got {text!r}")
    return key, parse_value(raw)


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """Many ``key=value`` items into a parameters dict (a later key wins)."""
    return dict(parse_param(item) for item in items)


def auth_headers(api_key: str | None = None, auth_string: str | None = None) -> dict[str, str]:
    """Basic auth from ``user:pass`` (self-hosted) wins over a Bearer API key (Prefect Cloud), like Prefect's client."""
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


def flow_run_url(api_url: str, flow_run_id: str, ui_url: str | None = None) -> str:
    """The UI page of a flow run.

    Prefect Cloud (``https://api.prefect.cloud/api/accounts/<a>/workspaces/<w>``) ->
    ``https://app.prefect.cloud/account/<a>/workspace/<w>/runs/flow-run/<id>``; a self-hosted server ->
    ``<ui_url or api_url minus /api>/runs/flow-run/<id>``.
    """
    api = api_url.rstrip("/")
    cloud = _CLOUD_API_RE.match(api)
    if cloud:
        host = cloud["host"]
        app_host = "app." + host[len("api.") :] if host.startswith("api.") else host
        return (
            f"{cloud['scheme']}://{app_host}/account/{cloud['account']}/workspace/{cloud['workspace']}"
            f"/runs/flow-run/{flow_run_id}"
        )
    if ui_url:
        base = ui_url.rstrip("/")
    else:
        base = api[: -len("/api")] if api.endswith("/api") else api
    return f"{base}/runs/flow-run/{flow_run_id}"


def _detail(response: httpx.Response) -> str:
    """The server's error detail, short."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return json.dumps(body)[:300]


# --- the API client ----------------------------------------------------------------------------


class PrefectApi:
    """The few Prefect REST calls the trigger needs, with retries on transient errors."""

    def __init__(
        self,
        api_url: str,
        *,
        api_key: str | None = None,
        auth_string: str | None = None,
        retries: int = 4,
        retry_delay: float = 2.0,
        request_timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.has_credentials = bool(api_key or auth_string)
        self.retries = max(0, retries)
        self.retry_delay = max(0.0, retry_delay)
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=self.api_url + "/",
            headers={**auth_headers(api_key, auth_string), "Accept": "application/json"},
            timeout=request_timeout,
            transport=transport,
        )

    def __enter__(self) -> PrefectApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _auth_error(self, response: httpx.Response) -> TriggerError:
        code = response.status_code
        what = "refused the credentials" if code == 401 else "denied access"
        if self.has_credentials:
            hint = (
                "check PREFECT_API_KEY (Prefect Cloud API key, sent as Bearer) or PREFECT_API_AUTH_STRING "
                "(user:pass of a self-hosted server, sent as HTTP Basic)"
            )
        else:
            hint = (
                "no credentials were given: set PREFECT_API_KEY (Prefect Cloud) or PREFECT_API_AUTH_STRING "
                "(self-hosted server with PREFECT_SERVER_API_AUTH_STRING)"
            )
        return TriggerError(
            f"authentication failed: the Prefect API at {self.api_url} {what} (HTTP {code}: "
            f"{_detail(response)}); {hint}",
            ExitCode.AUTH,
        )

    def _json(self, method: str, path: str, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise TriggerError(
                f"{method} {self.api_url}/{path} answered HTTP {response.status_code} with no JSON: is "
                "PREFECT_API_URL the API (a self-hosted one ends in /api)?",
                ExitCode.API,
            ) from exc

    def request(self, method: str, path: str, *, json_body: Any = None) -> Any:
        """One API call; transport errors and 408/425/429/5xx are retried ``retries`` times with backoff."""
        last_error = ""
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, path, json=json_body)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                code = response.status_code
                if code in (401, 403):
                    raise self._auth_error(response)
                if code in RETRY_STATUS_CODES:
                    last_error = f"HTTP {code}: {_detail(response)}"
                elif code == 404:
                    raise TriggerError(
                        f"{method} {path}: not found (HTTP 404: {_detail(response)})", ExitCode.NOT_FOUND
                    )
                elif code >= 400:
                    raise TriggerError(f"{method} {path}: HTTP {code}: {_detail(response)}", ExitCode.API)
                else:
                    return self._json(method, path, response)
            if attempt < self.retries:
                delay = min(self.retry_delay * 2**attempt, 30.0)
                logger.warning(
                    "%s %s: %s; retrying in %.1fs (%d/%d)",
                    method,
                    path,
                    last_error,
                    delay,
                    attempt + 1,
                    self.retries,
                )
                self._sleep(delay)
        raise TriggerError(
            f"{method} {self.api_url}/{path} failed after {self.retries + 1} attempts: {last_error}",
            ExitCode.API,
        )

    def read_deployment(self, name: str) -> dict[str, Any]:
        """The deployment called ``flow-name/deployment-name``."""
        flow_name, sep, deployment_name = name.partition("/")
        if not sep or not flow_name or not deployment_name or "/" in deployment_name:
            raise TriggerError(f"deployment must be FLOW/DEPLOYMENT, got {name!r}", ExitCode.USAGE)
        try:
            return self.request(
                "GET", f"deployments/name/{quote(flow_name, safe='')}/{quote(deployment_name, safe='')}"
            )
        except TriggerError as exc:
            if exc.exit_code == ExitCode.NOT_FOUND:
                raise TriggerError(
                    f"deployment {name!r} not found at {self.api_url} (run `python -m deployments.setup` first?)",
                    ExitCode.NOT_FOUND,
                ) from exc
            raise

    def create_flow_run(
        self,
        deployment_id: str,
        parameters: Mapping[str, Any],
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """A new run of the deployment; the idempotency key makes a retried POST return the same run."""
        body: dict[str, Any] = {
            "parameters": dict(parameters),
            "idempotency_key": idempotency_key or str(uuid.uuid4()),
        }
        if name:
            body["name"] = name
        if tags:
            body["tags"] = list(tags)
        return self.request("POST", f"deployments/{deployment_id}/create_flow_run", json_body=body)

    def read_flow_run(self, flow_run_id: str) -> dict[str, Any]:
        return self.request("GET", f"flow_runs/{flow_run_id}")

    def cancel_flow_run(self, flow_run_id: str) -> None:
        self.request(
            "POST",
            f"flow_runs/{flow_run_id}/set_state",
            json_body={
                "state": {"type": "CANCELLING", "message": "timed out in deployments.trigger"},
                "force": True,
            },
        )


def state_of(run: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(type, name, message) of a flow run's state."""
    state = run.get("state") or {}
    return state.get("type"), state.get("name"), state.get("message")


def wait_for_run(
    api: PrefectApi,
    flow_run_id: str,
    *,
    timeout: float,
    poll_interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll the run until its state is terminal; ``WaitTimeout`` after ``timeout`` seconds."""
    deadline = clock() + timeout
    seen: tuple[str | None, str | None] | None = None
    while True:
        run = api.read_flow_run(flow_run_id)
        state_type, state_name, message = state_of(run)
        if (state_type, state_name) != seen:
            seen = (state_type, state_name)
            logger.info(
                "flow run %s: %s%s",
                run.get("name", flow_run_id),
                state_name or state_type,
                f" ({message})" if message else "",
            )
        if state_type in TERMINAL_STATES:
            return run
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(
                f"flow run {flow_run_id} still {state_name or state_type} after {timeout:g}s", run
            )
        sleep(min(poll_interval, remaining))


# --- the command -------------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (test capture swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(quiet: bool) -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[trigger] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.trigger",
        description="Start a Prefect deployment run over the REST API and optionally wait for it.",
        epilog="Environment: PREFECT_API_URL (required), PREFECT_API_KEY (Cloud, Bearer), "
        "PREFECT_API_AUTH_STRING (self-hosted, user:pass), PREFECT_UI_URL (optional).",
    )
    parser.add_argument("deployment", help="FLOW/DEPLOYMENT, e.g. loan-risk-training/retrain")
    parser.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run parameter; VALUE is parsed as JSON when it parses, else taken as a string (repeatable)",
    )
    parser.add_argument("--wait", action="store_true", help="follow the run to a terminal state")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait with --wait (default 3600)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, help="seconds between state reads (default 5)"
    )
    parser.add_argument(
        "--cancel-on-timeout", action="store_true", help="cancel the run when --timeout passes before it ends"
    )
    parser.add_argument("--name", help="the flow run's name (default: Prefect picks one)")
    parser.add_argument("--tag", action="append", default=[], help="a tag for the flow run (repeatable)")
    parser.add_argument("--api-url", help="overrides PREFECT_API_URL")
    parser.add_argument("--retries", type=int, default=4, help="retries of each API call on transient errors")
    parser.add_argument(
        "--retry-delay", type=float, default=2.0, help="first retry delay in seconds, doubling"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    return parser


def _append(path: str | None, text: str) -> None:
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        logger.warning("could not write %s: %s", path, exc)


def _report_to_github(result: Mapping[str, Any]) -> None:
    """Step outputs and a summary line when running inside GitHub Actions."""
    outputs = "".join(
        f"{key}={'' if result.get(src) is None else result.get(src)}\n"
        for key, src in (
            ("flow_run_id", "id"),
            ("state", "state"),
            ("url", "url"),
            ("exit_code", "exit_code"),
        )
    )
    _append(os.environ.get("GITHUB_OUTPUT"), outputs)
    if result.get("id"):
        summary = (
            f"Prefect flow run [{result.get('name') or result['id']}]({result.get('url')}) of "
            f"`{result.get('deployment')}`: **{result.get('state_name') or result.get('state')}**\n"
        )
    else:
        summary = f"Prefect deployment `{result.get('deployment')}` was not started: {result.get('error')}\n"
    _append(os.environ.get("GITHUB_STEP_SUMMARY"), summary)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    result: dict[str, Any] = {
        "id": None,
        "name": None,
        "deployment": args.deployment,
        "state": None,
        "state_name": None,
        "message": None,
        "url": None,
        "exit_code": None,
        "error": None,
    }
    code = ExitCode.OK
    try:
        # Secrets pasted into CI settings often carry a trailing newline: strip every value.
        api_url = (args.api_url or os.environ.get("PREFECT_API_URL") or "").strip()
        if not api_url:
            raise TriggerError(
                "PREFECT_API_URL is not set (e.g. http://127.0.0.1:4200/api, or your Prefect Cloud workspace URL)",
                ExitCode.USAGE,
            )
        try:
            parameters = parse_params(args.param)
        except ValueError as exc:
            raise TriggerError(str(exc), ExitCode.USAGE) from exc
        if args.timeout <= 0 or args.poll_interval <= 0:
            raise TriggerError("--timeout and --poll-interval must be positive", ExitCode.USAGE)
        with PrefectApi(
            api_url,
            api_key=os.environ.get("PREFECT_API_KEY", "").strip() or None,
            auth_string=os.environ.get("PREFECT_API_AUTH_STRING", "").strip() or None,
            retries=args.retries,
            retry_delay=args.retry_delay,
        ) as api:
            deployment = api.read_deployment(args.deployment)
            run = api.create_flow_run(deployment["id"], parameters, name=args.name, tags=args.tag)
            url = flow_run_url(api_url, run["id"], os.environ.get("PREFECT_UI_URL", "").strip() or None)
            result.update(id=run["id"], name=run.get("name"), url=url)
            result["state"], result["state_name"], result["message"] = state_of(run)
            print(f"Flow run {run.get('name')} ({run['id']}) of {args.deployment}: {url}", flush=True)
            logger.info("parameters: %s", json.dumps(parameters, sort_keys=True))
            if args.wait:
                try:
                    run = wait_for_run(api, run["id"], timeout=args.timeout, poll_interval=args.poll_interval)
                except WaitTimeout as exc:
                    run = exc.run
                    if args.cancel_on_timeout:
                        logger.warning("cancelling flow run %s", run["id"])
                        api.cancel_flow_run(run["id"])
                    raise
                finally:
                    result["state"], result["state_name"], result["message"] = state_of(run)
                code = STATE_EXIT_CODES[result["state"]]
                if code != ExitCode.OK:
                    logger.error(
                        "flow run %s ended %s: %s",
                        run["id"],
                        result["state_name"],
                        result["message"] or "no message",
                    )
    except TriggerError as exc:
        code = exc.exit_code
        result["error"] = str(exc)
        logger.error("%s", exc)
    except Exception as exc:  # a bad URL, an unexpected answer: report it like any API error
        code = ExitCode.API
        result["error"] = f"{type(exc).__name__}: {exc}"
        logger.error("unexpected error: %s", result["error"])
    result["exit_code"] = int(code)
    print(json.dumps(result), flush=True)
    _report_to_github(result)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
