"""The monitor's stages: the champion's reference profile, the log window, the statistics, the drift report (HTML
with plots and JSON, as MLflow and Prefect artifacts) and the drift event the retrain trigger listens for.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.bundle import read_profile
from tasks.common import run_logger, stage
from tasks.errors import PermanentError
from tasks.monitoring import drift as monitor
from tasks.monitoring.events import model_resource
from tasks.registry import tracking, versions
from tasks.registry.aliases import Alias
from tasks.settings import Settings

TOP_PLOTS = 6


@dataclass(frozen=True)
class Reference:
    """The monitored version and its reference profile."""

    model_name: str
    version: str
    profile: dict[str, Any]


class Window:
    """The prediction-log records of one window and where they come from, as the report's ``window`` and
    ``log_dir`` (opaque to Prefect: it walks collections looking for futures)."""

    __slots__ = ("records", "context")

    def __init__(self, records: list[dict[str, Any]], context: dict[str, Any]) -> None:
        self.records, self.context = records, context


@stage("reference")
def reference_task(settings: Settings, model_version: str | None = None) -> Reference:
    """Stage: the version to watch (``model_version``, else the ``champion``) and its bundle's profile."""
    found = versions.get_version(settings, model_version) if model_version else None
    found = found or versions.version_by_alias(settings, Alias.CHAMPION)
    if found is None:
        raise PermanentError(
            f"model {settings.registry.model_name!r} has no {Alias.CHAMPION!r} alias: nothing is served to "
            "monitor (pass --model-version to watch another version)"
        )
    version = str(found.version)
    bundle = versions.download_bundle(settings, version, tracking.scratch_dir("monitor-") / "bundle")
    if (profile := read_profile(bundle)) is None:
        raise PermanentError(
            f"{versions.bundle_uri(settings.registry, version)} has no reference profile (profile.json): it was "
            "packaged before profiles existed; retrain to monitor it"
        )
    run_logger().info("monitoring %s v%s against its profile", settings.registry.model_name, version)
    return Reference(settings.registry.model_name, version, profile)


@stage("log-window")
def window_task(
    settings: Settings,
    log_dir: str | None,
    since: str | None,
    model_version: str,
    until: datetime | None = None,
) -> Window:
    """Stage: the records of ``model_version`` logged in the last ``since`` (default: ``monitor_window``)."""
    folder = log_dir or settings.serving.prediction_log_dir
    if folder is None:
        raise PermanentError("no prediction log folder: pass --log-dir or set LOANRISK_PREDICTION_LOG_DIR")
    end = until or datetime.now(UTC)
    start = end - monitor.parse_window(since or settings.monitoring.monitor_window)
    records = monitor.read_window(folder, start, end, model_version)
    run_logger().info(
        "%d record(s) of v%s in %s from %s to %s", len(records), model_version, folder, start, end
    )
    window = {"since": start.isoformat(), "until": end.isoformat()}
    return Window(records, {"window": window, "log_dir": str(Path(folder))})


@stage("drift")
def drift_task(
    settings: Settings, reference: Reference, window: Window, outcomes: str | None = None
) -> dict[str, Any]:
    """Stage: the window's drift report against the reference (and realised performance with ``outcomes``)."""
    context = {"model_name": reference.model_name, "model_version": reference.version, **window.context}
    report = monitor.drift_report(
        reference.profile, window.records, monitor.Thresholds.of(settings.monitoring), context
    )
    report["performance"] = None
    if outcomes and window.records:
        table = monitor.read_outcomes(outcomes)
        bad, good = settings.data.label_bad_statuses, settings.data.label_good_statuses
        token = settings.pseudonymiser().token
        report["performance"] = monitor.realised_performance(window.records, table, token, bad, good)
    run_logger().info("drift %s: %s", report["status"], "; ".join(report["reasons"]))
    return report


def _img(ax: Any) -> str:
    """The axes' figure as an inline PNG ``<img>`` (a Figure without pyplot: no backend to pick, none to close)."""
    buffer = io.BytesIO()
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    ax.figure.savefig(buffer, format="png", dpi=80)
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _bins_plot(title: str, entry: Mapping[str, Any]) -> str:
    from matplotlib.figure import Figure

    x = range(len(entry["bins"]))
    ax = Figure(figsize=(7, 3)).subplots()
    ax.bar([i - 0.2 for i in x], entry["reference"], width=0.4, label="reference")
    ax.bar([i + 0.2 for i in x], entry["current"], width=0.4, label="window")
    ax.set_xticks(list(x), entry["bins"], rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="share", title=f"{title}: PSI {entry['psi']:.3f}")
    return _img(ax)


def _psi_plot(report: Mapping[str, Any]) -> str:
    from matplotlib.figure import Figure

    items = list(report["features"].items())[:30][::-1]  # the features come largest PSI first
    ax = Figure(figsize=(7, 8)).subplots()
    ax.barh([k for k, _ in items], [min(v["psi"], 5.0) for _, v in items])
    ax.axvline(report["thresholds"]["feature_psi"], color="red", linestyle="--", label="threshold")
    ax.set(xlabel="PSI (capped at 5)", title="Feature PSI (top 30)")
    ax.tick_params(axis="y", labelsize=7)
    return _img(ax)


def report_html(report: Mapping[str, Any]) -> str:
    """The drift report as one self-contained HTML page (plots inline as PNG data)."""
    e = html.escape
    window = report.get("window") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
        ".drift{background:#fdd}</style></head><body>",
        f"<h1>Drift report: {e(str(report.get('model_name')))} v{e(str(report.get('model_version')))}</h1>",
        f"<p>Window {e(str(window.get('since')))} → {e(str(window.get('until')))}; "
        f"{report['volume']} record(s). Status: <b>{e(report['status'])}</b></p>",
        "<ul>" + "".join(f"<li>{e(r)}</li>" for r in report["reasons"]) + "</ul>",
    ]
    if performance := report.get("performance"):
        shown = ", ".join(f"{e(k)}: {e(str(v))}" for k, v in performance.items())
        parts.append(f"<h2>Realised performance (matured loans)</h2><p>{shown}</p>")
    if report.get("score"):
        drifted = report["drifted_features"]
        parts += [
            "<h2>Score</h2>",
            _bins_plot("score", report["score"]),
            "<h2>Features</h2>",
            _psi_plot(report),
        ]
        parts += [_bins_plot(name, report["features"][name]) for name in drifted[:TOP_PLOTS]]
        parts.append("<table><tr><th>feature</th><th>PSI</th><th>missing</th><th>reference missing</th></tr>")
        parts += (
            f"<tr{' class=drift' if name in drifted else ''}><td>{e(name)}</td><td>{d['psi']:.4f}</td>"
            f"<td>{d['missing_rate']:.3f}</td><td>{d['reference_missing_rate']:.3f}</td></tr>"
            for name, d in report["features"].items()
        )
        parts.append("</table>")
    return "".join(parts) + "</body></html>"


def report_markdown(report: Mapping[str, Any], run_id: str) -> str:
    """The summary for the Prefect UI."""
    lines = [
        f"# Drift report: {report.get('model_name')} v{report.get('model_version')}",
        "",
        f"**{report['status']}**, {report['volume']} record(s); MLflow run `{run_id}` holds "
        "`drift/report.html` and `drift/report.json`.",
        "",
        *[f"- {r}" for r in report["reasons"]],
    ]
    if report.get("score"):
        top = list(report["features"].items())[:10]
        lines += ["", "| feature | PSI | missing |", "|---|---|---|"]
        lines += [f"| {k} | {v['psi']:.4f} | {v['missing_rate']:.3f} |" for k, v in top]
    return "\n".join(lines)


@stage("drift-report")
def report_task(settings: Settings, run_id: str, report: dict[str, Any]) -> None:
    """Stage: the report as MLflow artifacts (``drift/report.{html,json}``), metrics, tags; a Prefect one."""
    from prefect.artifacts import create_markdown_artifact

    tracking.log_dict(settings, run_id, report, "drift/report.json")
    tracking.log_text(settings, run_id, report_html(report), "drift/report.html")
    metrics = {"volume": report["volume"], "drifted_features": len(report["drifted_features"])}
    if report.get("score"):
        metrics["score_psi"] = report["score"]["psi"]
        metrics |= {f"psi.{k}": v["psi"] for k, v in report["features"].items()}
    tracking.log_metrics(settings, run_id, metrics)
    tags = {"drift.status": report["status"], "model_version": report.get("model_version") or ""}
    tracking.set_tags(settings, run_id, tags)
    create_markdown_artifact(
        key="drift-report", markdown=report_markdown(report, run_id), description="Drift of the served model"
    )


@stage("drift-event")
def emit_task(settings: Settings, report: dict[str, Any]) -> str | None:
    """Stage: emit the report's drift event about the model (none without a decision); the event's id."""
    from prefect.events import emit_event

    if report["event"] is None:
        run_logger().info("no drift event: %s", report["reasons"][0])
        return None
    event = emit_event(
        event=report["event"],
        resource=model_resource(report["model_name"], report["model_version"]),
        payload=monitor.event_payload(report),
    )
    run_logger().info("emitted %s (%s)", report["event"], event.id if event else "events disabled")
    return str(event.id) if event else None
