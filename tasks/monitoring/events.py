"""The pipeline's own Prefect events (a model version promoted, released) about the registered model, the resource
the drift monitor's ``loan-risk.drift.*`` events name too; emitting never fails the stage that emits.
"""

from __future__ import annotations

from typing import Any

from tasks.common import run_logger
from tasks.settings import Settings

EVENT_PREFIX = "loan-risk.model."
PROMOTED = "promoted"
RELEASED = "released"
# The metrics an event carries: enough to judge the version at a glance.
SUMMARY_METRICS = ("test_roc_auc", "test_pr_auc", "test_precision", "test_recall", "test_f1", "threshold")


def model_resource(model_name: str, version: str) -> dict[str, str]:
    """The resource of a model event (and of the drift monitor's events)."""
    return {
        "prefect.resource.id": f"{EVENT_PREFIX}{model_name}",
        "prefect.resource.name": model_name,
        "loan-risk.model.name": model_name,
        "loan-risk.model.version": str(version),
    }


def metrics_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline metrics, rounded (an event is for people and filters, not for the record)."""
    return {k: round(float(metrics[k]), 4) for k in SUMMARY_METRICS if k in metrics}


def emit_model_event(settings: Settings, kind: str, version: str, payload: dict[str, Any]) -> Any:
    """Emit ``loan-risk.model.<kind>`` for ``version``; the event, or None when none could be sent."""
    from prefect.events import emit_event

    name = settings.registry.model_name
    body = {"version": str(version), "model_name": name, **payload}
    try:
        event = emit_event(
            event=f"{EVENT_PREFIX}{kind}", resource=model_resource(name, version), payload=body
        )
    except Exception as exc:  # noqa: BLE001 - the promotion or release happened; its event is a notice
        run_logger().warning("event %s%s for v%s not emitted: %s", EVENT_PREFIX, kind, version, exc)
        return None
    run_logger().info("event %s%s for %s v%s", EVENT_PREFIX, kind, name, version)
    return event
