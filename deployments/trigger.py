"""Start a run of a Prefect deployment over the REST API and, with ``--wait``, follow it to its end.

    python -m deployments.trigger loan-risk-training/retrain --param scale=0.02 --wait --timeout 3600

GitHub Actions calls it, so it imports no Prefect (plain httpx); options and exit codes: docs/deployments.md.
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
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any
from urllib.parse import quote

import httpx

from tasks.errors import PermanentError

logger = logging.getLogger("deployments.trigger")


class ExitCode(IntEnum):
    OK = 0  # completed (or created, without --wait)
    FAILED = 1
    USAGE = 2  # usage or configuration error
    CRASHED = 3
    CANCELLED = 4
    TIMEOUT = 5  # timed out while waiting
    AUTH = 6  # credentials refused (HTTP 401/403)
    NOT_FOUND = 7  # deployment not found
    API = 8  # other API error, or the API unreachable after retries


STATE_EXIT_CODES = {"COMPLETED": ExitCode.OK, **{s: ExitCode[s] for s in ("FAILED", "CRASHED", "CANCELLED")}}
TERMINAL_STATES = set(STATE_EXIT_CODES)
RETRY_STATUS_CODES = {408, 425, 429, 500, 502, 503, 504}
RESULT_KEYS = ("id", "name", "deployment", "state", "state_name", "message", "url", "exit_code", "error")

AUTH_HINTS = (  # without, with credentials
    "no credentials were given: set PREFECT_API_KEY (Prefect Cloud) or PREFECT_API_AUTH_STRING "
    "(self-hosted server with PREFECT_SERVER_API_AUTH_STRING)",
    "check PREFECT_API_KEY (Prefect Cloud API key, sent as Bearer) or PREFECT_API_AUTH_STRING "
    "(user:pass of a self-hosted server, sent as HTTP Basic)",
)
_CLOUD_API_RE = re.compile(
    r"^(?P<scheme>https?)://(?P<host>[^/]+)/api/accounts/(?P<account>[^/]+)/workspaces/(?P<workspace>[^/]+)$"
)


class TriggerError(PermanentError):
    """An error that ends the command with ``exit_code``; ``run`` is the last state read, if any."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.API, run: dict[str, Any] | None = None):
        super().__init__(message)
        self.exit_code, self.run = exit_code, run


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` -> ``(key, value)``: the value (may hold ``=``) as strict JSON if it parses, else text"""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--param expects key=value, got {text!r}")
    try:
        return key.strip(), json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return key.strip(), raw


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """Many ``key=value`` items into a parameters dict (a later key wins)."""
    return dict(parse_param(item) for item in items)


def auth_headers(api_key: str | None = None, auth_string: str | None = None) -> dict[str, str]:
    """Basic from ``user:pass`` (self-hosted) wins over a Bearer key (Prefect Cloud), as Prefect does."""
    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def flow_run_url(api_url: str, flow_run_id: str, ui_url: str | None = None) -> str:
    """The UI page of a flow run: Prefect Cloud's ``app.`` host for a Cloud workspace URL, else
    ``<ui_url or api_url minus /api>/runs/flow-run/<id>``."""
    api = api_url.rstrip("/")
    if cloud := _CLOUD_API_RE.match(api):
        host = cloud["host"]
        app_host = "app." + host.removeprefix("api.") if host.startswith("api.") else host
        base = f"{cloud['scheme']}://{app_host}/account/{cloud['account']}/workspace/{cloud['workspace']}"
    else:
        base = ui_url.rstrip("/") if ui_url else api.removesuffix("/api")
    return f"{base}/runs/flow-run/{flow_run_id}"


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    return str(body["detail"] if isinstance(body, dict) and "detail" in body else json.dumps(body))[:300]


class PrefectApi(httpx.Client):
    """The few Prefect REST calls the trigger needs, with retries on transient errors."""

    def __init__(
        self, api_url: str, auth: dict[str, str], retries: int = 4, retry_delay: float = 2.0
    ) -> None:
        self.api_url, self.has_credentials = api_url.rstrip("/"), bool(auth)
        self.retries, self.retry_delay = max(0, retries), max(0.0, retry_delay)
        super().__init__(
            base_url=self.api_url + "/", headers={**auth, "Accept": "application/json"}, timeout=30
        )

    def call(self, method: str, path: str, *, json_body: Any = None, not_found: str | None = None) -> Any:
        """One API call; transport errors and 408/425/429/5xx are retried ``retries`` times with backoff."""
        for attempt in range(self.retries + 1):
            try:
                response = self.request(method, path, json=json_body)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                code = response.status_code
                if code in (401, 403):
                    what = "refused the credentials" if code == 401 else "denied access"
                    what = f"the Prefect API at {self.api_url} {what} (HTTP {code}: {_detail(response)})"
                    raise TriggerError(
                        f"authentication failed: {what}; {AUTH_HINTS[self.has_credentials]}", ExitCode.AUTH
                    )
                if code == 404:
                    detail = f"{method} {path}: not found (HTTP 404: {_detail(response)})"
                    raise TriggerError(not_found or detail, ExitCode.NOT_FOUND)
                if code >= 400 and code not in RETRY_STATUS_CODES:
                    raise TriggerError(f"{method} {path}: HTTP {code}: {_detail(response)}")
                if code < 400:
                    try:
                        return response.json() if response.content else None
                    except ValueError as exc:
                        raise TriggerError(
                            f"{method} {self.api_url}/{path} answered HTTP {code} with no JSON: is "
                            "PREFECT_API_URL the API (a self-hosted one ends in /api)?"
                        ) from exc
                last_error = f"HTTP {code}: {_detail(response)}"
            if attempt < self.retries:
                delay = min(self.retry_delay * 2**attempt, 30.0)
                what = "%s %s: %s; retrying in %.1fs (%d/%d)"
                logger.warning(what, method, path, last_error, delay, attempt + 1, self.retries)
                time.sleep(delay)
        raise TriggerError(
            f"{method} {self.api_url}/{path} failed after {self.retries + 1} attempts: {last_error}"
        )

    def read_deployment(self, name: str) -> dict[str, Any]:
        """The deployment called ``flow-name/deployment-name``."""
        flow_name, sep, deployment_name = name.partition("/")
        if not sep or not flow_name or not deployment_name or "/" in deployment_name:
            raise TriggerError(f"deployment must be FLOW/DEPLOYMENT, got {name!r}", ExitCode.USAGE)
        path = f"deployments/name/{quote(flow_name, safe='')}/{quote(deployment_name, safe='')}"
        hint = f"deployment {name!r} not found at {self.api_url} (run `python -m deployments.setup` first?)"
        return self.call("GET", path, not_found=hint)

    def create_flow_run(
        self, deployment_id: str, parameters: Mapping[str, Any], name: str | None, tags: Sequence[str]
    ) -> dict[str, Any]:
        """A new run of the deployment; the idempotency key makes a retried POST return the same run."""
        body = {"parameters": dict(parameters), "idempotency_key": str(uuid.uuid4())}
        body |= ({"name": name} if name else {}) | ({"tags": list(tags)} if tags else {})
        return self.call("POST", f"deployments/{deployment_id}/create_flow_run", json_body=body)

    def cancel_flow_run(self, flow_run_id: str) -> None:
        state = {"type": "CANCELLING", "message": "timed out in deployments.trigger"}
        self.call("POST", f"flow_runs/{flow_run_id}/set_state", json_body={"state": state, "force": True})


def state_of(run: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(type, name, message) of a flow run's state."""
    state = run.get("state") or {}
    return state.get("type"), state.get("name"), state.get("message")


def wait_for_run(
    api: PrefectApi, flow_run_id: str, *, timeout: float, poll_interval: float = 5.0
) -> dict[str, Any]:
    """Poll the run until its state is terminal; a ``TIMEOUT`` error carrying the run after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        run = api.call("GET", f"flow_runs/{flow_run_id}")
        state_type, state_name, message = state_of(run)
        if (state_type, state_name) != seen:
            seen = (state_type, state_name)
            suffix = f" ({message})" if message else ""
            logger.info("flow run %s: %s%s", run.get("name", flow_run_id), state_name or state_type, suffix)
        if state_type in TERMINAL_STATES:
            return run
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            what = f"flow run {flow_run_id} still {state_name or state_type} after {timeout:g}s"
            raise TriggerError(what, ExitCode.TIMEOUT, run)
        time.sleep(min(poll_interval, remaining))


def _append(path: str | None, text: str) -> None:
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            logger.warning("could not write %s: %s", path, exc)


def _report_to_github(result: Mapping[str, Any]) -> None:
    """Step outputs and a summary line when running inside GitHub Actions."""
    keys = {"flow_run_id": "id", "state": "state", "url": "url", "exit_code": "exit_code"}
    outputs = "".join(f"{k}={'' if result[v] is None else result[v]}\n" for k, v in keys.items())
    _append(os.environ.get("GITHUB_OUTPUT"), outputs)
    if result["id"]:
        summary = (
            f"Prefect flow run [{result['name'] or result['id']}]({result['url']}) of "
            f"`{result['deployment']}`: **{result['state_name'] or result['state']}**\n"
        )
    else:
        summary = f"Prefect deployment `{result['deployment']}` was not started: {result['error']}\n"
    _append(os.environ.get("GITHUB_STEP_SUMMARY"), summary)


def _env(name: str) -> str | None:
    # Secrets pasted into CI settings often carry a trailing newline: strip every value.
    return os.environ.get(name, "").strip() or None


def _run(args: argparse.Namespace, result: dict[str, Any]) -> ExitCode:
    """Create the run (and follow it with ``--wait``), filling ``result``; the exit code."""
    api_url = (args.api_url or os.environ.get("PREFECT_API_URL") or "").strip()
    if not api_url:
        example = "e.g. http://127.0.0.1:4200/api, or a Prefect Cloud workspace URL"
        raise TriggerError(f"PREFECT_API_URL is not set ({example})", ExitCode.USAGE)
    try:
        parameters = parse_params(args.param)
    except ValueError as exc:
        raise TriggerError(str(exc), ExitCode.USAGE) from exc
    if args.timeout <= 0 or args.poll_interval <= 0:
        raise TriggerError("--timeout and --poll-interval must be positive", ExitCode.USAGE)
    auth = auth_headers(_env("PREFECT_API_KEY"), _env("PREFECT_API_AUTH_STRING"))
    with PrefectApi(api_url, auth, args.retries, args.retry_delay) as api:
        deployment = api.read_deployment(args.deployment)
        run = api.create_flow_run(deployment["id"], parameters, args.name, args.tag)
        url = flow_run_url(api_url, run["id"], _env("PREFECT_UI_URL"))
        result.update(id=run["id"], name=run.get("name"), url=url)
        result["state"], result["state_name"], result["message"] = state_of(run)
        print(f"Flow run {run.get('name')} ({run['id']}) of {args.deployment}: {url}", flush=True)
        logger.info("parameters: %s", json.dumps(parameters, sort_keys=True))
        if not args.wait:
            return ExitCode.OK
        try:
            run = wait_for_run(api, run["id"], timeout=args.timeout, poll_interval=args.poll_interval)
        except TriggerError as exc:
            if exc.run is not None:
                run = exc.run
                if args.cancel_on_timeout:
                    logger.warning("cancelling flow run %s", run["id"])
                    api.cancel_flow_run(run["id"])
            raise
        finally:
            result["state"], result["state_name"], result["message"] = state_of(run)
    code = STATE_EXIT_CODES[result["state"]]
    if code != ExitCode.OK:
        message = result["message"] or "no message"
        logger.error("flow run %s ended %s: %s", run["id"], result["state_name"], message)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.trigger",
        description="Start a Prefect deployment run over the REST API and optionally wait for it.",
        epilog="Environment: PREFECT_API_URL (required), PREFECT_API_KEY (Cloud, Bearer), "
        "PREFECT_API_AUTH_STRING (self-hosted, user:pass), PREFECT_UI_URL (optional).",
    )
    add = parser.add_argument
    add("deployment", help="FLOW/DEPLOYMENT, e.g. loan-risk-training/retrain")
    add("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help="a run parameter, repeatable")
    add("--wait", action="store_true", help="follow the run to a terminal state")
    add("--timeout", type=float, default=3600.0, help="seconds to wait with --wait (default 3600)")
    add("--poll-interval", type=float, default=5.0, help="seconds between state reads (default 5)")
    add("--cancel-on-timeout", action="store_true", help="cancel the run when --timeout passes first")
    add("--name", help="the flow run's name (default: Prefect picks one)")
    add("--tag", action="append", default=[], help="a tag for the flow run (repeatable)")
    add("--api-url", help="overrides PREFECT_API_URL")
    add("--retries", type=int, default=4, help="retries of each API call on transient errors")
    add("--retry-delay", type=float, default=2.0, help="first retry delay in seconds, doubling")
    add("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)  # this call's (a test's capture swaps it between calls)
    handler.setFormatter(logging.Formatter("[trigger] %(message)s"))
    logger.handlers = [handler]
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.propagate = False
    result: dict[str, Any] = dict.fromkeys(RESULT_KEYS) | {"deployment": args.deployment}
    try:
        code = _run(args, result)
    except TriggerError as exc:
        code, result["error"] = exc.exit_code, str(exc)
        logger.error("%s", exc)
    except Exception as exc:  # a bad URL, an unexpected answer: report it like any API error
        code, result["error"] = ExitCode.API, f"{type(exc).__name__}: {exc}"
        logger.error("unexpected error: %s", result["error"])
    result["exit_code"] = int(code)
    print(json.dumps(result), flush=True)
    _report_to_github(result)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
