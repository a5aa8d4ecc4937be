"""Prefect automations (:data:`ALERTS`) that notify each configured channel: ``python -m deployments.alerts``.

Channels come from settings (they hold secrets): ``alert_webhook_url`` (a ``Webhook`` block) and each of
``alert_apprise_urls`` in a ``Slack Webhook`` block, the built-in block that hands any Apprise URL to Apprise
(a block class of our own would not load in the Prefect server, which runs the actions). No channel: removed.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tasks.settings import get_settings
from tasks.settings.sections import MonitoringSettings

logger = logging.getLogger("deployments.alerts")

PREFIX = "loan-risk: "
WEBHOOK_BLOCK = "loan-risk-alert-webhook"
APPRISE_BLOCK = "loan-risk-alert-apprise-{}"
MODEL_EVENTS = "loan-risk.model.*"
DRIFT_DETECTED = "loan-risk.drift.detected"

# Jinja, rendered by the server when an automation fires (context: event, flow_run, flow, deployment ...).
_MODEL = "event.resource['loan-risk.model.name']"
_VERSION = "event.resource['loan-risk.model.version']"
_RUN_LINK = "flow_run|ui_url"


@dataclass(frozen=True)
class Alert:
    """One automation: what fires it and what its notification says."""

    description: str
    expect: frozenset[str]
    subject: str
    body: str
    fields: dict[str, str]  # JSON field -> Jinja expression, for the webhook document
    match: dict[str, Any] = field(default_factory=lambda: {"prefect.resource.id": MODEL_EVENTS})

    @property
    def key(self) -> str:
        return self.description.replace(" ", "-")

    @property
    def name(self) -> str:
        return PREFIX + self.description


_MV = "{{ " + _MODEL + " }} v{{ " + _VERSION + " }}"
_METRICS = (
    "\nTest metrics: {% for k, v in (event.payload.metrics or {}).items() %}{{ k }} {{ v }}; {% endfor %}"
)
_MODEL_FIELDS = {
    "model": _MODEL,
    "version": _VERSION,
    "flow_run": "event.related|selectattr('role', 'equalto', 'flow-run')|map(attribute='name')|first",
    "payload": "event.payload",
}
ALERTS = [  # see the module docstring
    Alert(
        "flow run failed",
        frozenset({"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}),
        "{{ flow.name }}: run {{ flow_run.name }} {{ flow_run.state.name }}",
        "Flow run {{ flow_run.name }} of {{ flow.name }} entered {{ flow_run.state.name }}: "
        "{{ flow_run.state.message }}\n{{ " + _RUN_LINK + " }}",
        {
            "flow": "flow.name",
            "flow_run": "flow_run.name",
            "flow_run_id": "flow_run.id|string",
            "state": "flow_run.state.name",
            "reason": "flow_run.state.message",
            "link": _RUN_LINK,
            "deployment": "deployment.name if deployment else none",
        },
        {"prefect.resource.id": "prefect.flow-run.*"},
    ),
    Alert(
        "model promoted",
        frozenset({"loan-risk.model.promoted"}),
        _MV + " promoted to candidate",
        _MV + " passed the promotion gate: {{ (event.payload.reasons or [])|join('; ') }}" + _METRICS,
        {**_MODEL_FIELDS, "reason": "(event.payload.reasons or [])|join('; ')"},
    ),
    Alert(
        "model released",
        frozenset({"loan-risk.model.released"}),
        _MV + " released ({{ event.payload.kind }})",
        _MV + " is the champion ({{ event.payload.kind }}"
        "{% if event.payload.previous_version %}, was v{{ event.payload.previous_version }}{% endif %}): "
        "{{ event.payload.image }}@{{ event.payload.digest }}"
        "{% if event.payload.reason %}\nReason: {{ event.payload.reason }}{% endif %}" + _METRICS,
        {
            **_MODEL_FIELDS,
            "reason": "event.payload.reason or event.payload.kind",
            "digest": "event.payload.digest",
        },
    ),
    Alert(
        "drift detected",
        frozenset({DRIFT_DETECTED}),
        _MV + ": drift detected",
        "Drift detected on the inputs or scores of " + _MV + ": {{ event.payload|tojson }}",
        {**_MODEL_FIELDS, "reason": "'drift detected'"},
    ),
]


def webhook_payload(alert: Alert) -> str:
    """The webhook's JSON document as a Jinja template: ``{"alert", "summary", "model", "version", "flow",
    "flow_run", "state", "reason", "link", "payload", "event", "occurred"}``, values through ``tojson``."""
    fields = {"alert": f"'{alert.key}'", "summary": "summary", **alert.fields}
    fields |= {"event": "event.event", "occurred": "event.occurred|string"}
    parts = [f'"{k}": {{{{ ({v})|default(none)|tojson }}}}' for k, v in fields.items()]  # absent: null
    return "{% set summary %}" + alert.subject + "{% endset %}{" + ", ".join(parts) + "}"


def _trigger(alert: Alert, alert_flows: Sequence[str]) -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    related = {"prefect.resource.role": "flow", "prefect.resource.name": list(alert_flows)}
    return EventTrigger(
        expect=set(alert.expect),
        match=alert.match,
        match_related=related if alert.key == "flow-run-failed" else {},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


def save_blocks(monitoring: MonitoringSettings) -> list[tuple[str, Any]]:
    """The channel blocks, saved over whatever had their names: ``[(kind, block_document_id)]``."""
    from prefect.blocks.notifications import SlackWebhook
    from prefect.blocks.webhook import Webhook

    channels: list[tuple[str, Any]] = []
    if monitoring.alert_webhook_url is not None:
        block = Webhook(url=monitoring.alert_webhook_url, headers={"Content-Type": "application/json"})
        channels.append(("webhook", block.save(WEBHOOK_BLOCK, overwrite=True)))
    for i, url in enumerate(monitoring.alert_apprise_urls, start=1):
        block = SlackWebhook(url=url, notify_type="warning")
        channels.append(("apprise", block.save(APPRISE_BLOCK.format(i), overwrite=True)))
    return channels


def _actions(alert: Alert, channels: Sequence[tuple[str, Any]]) -> list[Any]:
    from prefect.events.actions import CallWebhook, SendNotification

    return [
        CallWebhook(block_document_id=block_id, payload=webhook_payload(alert))
        if kind == "webhook"
        else SendNotification(block_document_id=block_id, subject=alert.subject, body=alert.body)
        for kind, block_id in channels
    ]


def ensure_alerts(monitoring: MonitoringSettings | None = None) -> dict[str, Any]:
    """Create or update the automations on the configured Prefect API; what ``main`` prints."""
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore

    monitoring = monitoring or get_settings().monitoring
    channels = save_blocks(monitoring)
    results = []
    with get_client(sync_client=True) as client:
        for alert in ALERTS:
            existing = client.read_automations_by_name(alert.name)
            for extra in existing[1:] if channels else existing:  # duplicates; all of them with no channel
                client.delete_automation(extra.id)
            result = {"name": alert.name, "id": None, "status": "removed" if existing else "absent"}
            if channels:
                core = AutomationCore(
                    name=alert.name,
                    description=f"Notify the loan-risk channels: {alert.description} (deployments/alerts.py)",
                    enabled=True,
                    tags=["loan-risk"],
                    trigger=_trigger(alert, monitoring.alert_flows),
                    actions=_actions(alert, channels),
                )
                if existing:
                    client.update_automation(existing[0].id, core)
                    result.update(id=str(existing[0].id), status="updated")
                else:
                    result.update(id=str(client.create_automation(core)), status="created")
                logger.info("%s: %s", result["status"], alert.name)
            results.append(result)
    return {"channels": [kind for kind, _ in channels], "automations": results}


def api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect's settings resolve it (None: an ephemeral server)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m deployments.alerts", description="Create/update").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[alerts] %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not (url := api_url()):
        logger.error("no Prefect API configured: set PREFECT_API_URL (automations live on a server)")
        return 2
    print(json.dumps({"api_url": url, **ensure_alerts()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
