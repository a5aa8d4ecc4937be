"""The monitor flow: prediction log window → drift against the bundle's reference profile → report + event.

Prints one JSON line: the status (``detected``, ``ok``, ``too_few``, ``no_data``), the event, the PSIs and the
MLflow run holding the report (docs/monitoring.md).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from prefect import flow

from tasks.common import cli_run
from tasks.monitoring.report import drift_task, emit_task, reference_task, report_task, window_task
from tasks.registry import tracking
from tasks.settings import configure_environment, get_settings


@flow(name="loan-risk-monitor", log_prints=False)
def monitor_flow(
    since: str | None = None,
    log_dir: str | None = None,
    outcomes: str | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Compare the served version's recent predictions with its reference profile; emit the drift event."""
    settings = get_settings()
    name = f"monitor-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with tracking.run(settings, name, {"kind": "monitor"}) as run_id:
        reference = reference_task(settings, model_version)
        window = window_task(settings, log_dir, since, reference.version)
        report = drift_task(settings, reference, window, outcomes)
        report_task(settings, run_id, report)
        event_id = emit_task(settings, report)
    keys = ("status", "event", "volume", "window", "drifted_features", "performance", "reasons")
    return {k: report[k] for k in keys} | {
        "event_id": event_id,
        "model_name": reference.model_name,
        "model_version": reference.version,
        "score_psi": (report.get("score") or {}).get("psi"),
        "feature_psi": {k: round(v["psi"], 4) for k, v in report["features"].items()},
        "run_id": run_id,
        "report": f"runs:/{run_id}/drift/report.html",
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: run the monitor flow and print its result as one JSON line."""
    configure_environment()
    parser = argparse.ArgumentParser(prog="python -m flows.monitor", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--since", help="how far back to read the log (24h, 7d, ...; default: monitor_window)"
    )
    parser.add_argument("--log-dir", help="the prediction log folder (default: LOANRISK_PREDICTION_LOG_DIR)")
    parser.add_argument("--outcomes", help="a loan.csv-shaped file: realised AUC and KS on matured loans")
    parser.add_argument("--model-version", help="watch this version instead of the champion")
    args = parser.parse_args(argv)
    return cli_run(lambda: monitor_flow(**vars(args)))


if __name__ == "__main__":
    sys.exit(main())
