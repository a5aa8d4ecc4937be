"""The model card's tables and its two templates: :class:`Table` rows built once, rendered as Markdown and HTML.

The evaluate stage's Prefect summary reuses :func:`evaluation_markdown`; :mod:`tasks.model.card` assembles the
whole card from a bundle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jinja2

from serving.bundle import PLOTS_DIR

PLOT_CAPTIONS = {
    "reliability.png": "Reliability: observed risky share against the predicted probability",
    "deciles.png": "Bad rate by score decile (test)",
}


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # file names under plots/


def num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) or not math.isfinite(value) else f"{100 * value:.1f}%"


def _interval(metrics: dict[str, Any], prefix: str, name: str) -> str:
    low, high = metrics.get(f"{prefix}_{name}_ci_low"), metrics.get(f"{prefix}_{name}_ci_high")
    return "n/a" if low is None or high is None else f"[{num(low)}, {num(high)}]"


# --- the evaluation sections (card and Prefect summary) ------------------------------------------------------


def metrics_table(metrics: dict[str, Any]) -> Table:
    rows = [
        ["ROC-AUC", *(num(metrics.get(f"{s}_roc_auc")) for s in ("valid", "test"))],
        ["ROC-AUC 95% interval", _interval(metrics, "valid", "auc"), _interval(metrics, "test", "auc")],
        ["Gini (2·AUC − 1)", *(num(metrics.get(f"{s}_gini")) for s in ("valid", "test"))],
        ["KS", *(num(metrics.get(f"{s}_ks")) for s in ("valid", "test"))],
        ["KS 95% interval", _interval(metrics, "valid", "ks"), _interval(metrics, "test", "ks")],
    ]
    for key, label in (
        ("pr_auc", "PR-AUC"),
        ("precision", "precision at the threshold"),
        ("recall", "recall at the threshold"),
        ("f1", "F1 at the threshold"),
        ("ece", "expected calibration error"),
        ("brier", "Brier score"),
        ("log_loss", "log loss"),
    ):
        rows.append([label, *(num(metrics.get(f"{s}_{key}")) for s in ("valid", "test"))])
    return Table(["metric", "validation", "test"], rows)


def decile_table(rows: list[dict[str, Any]], caption: str) -> Table:
    return Table(
        ["decile", "scores", "loans", "bads", "bad rate", "bads captured (cum.)", "lift"],
        [
            [
                str(r["decile"]),
                f"{r['min_score']:.3f}–{r['max_score']:.3f}",
                num(r["count"]),
                num(r["bads"]),
                pct(r["bad_rate"]),
                pct(r["cum_bad_share"]),
                num(r["lift"], 2),
            ]
            for r in rows
        ],
        caption,
    )


def calibration_table(bins: list[dict[str, Any]], caption: str) -> Table:
    return Table(
        ["probability bin", "loans", "mean predicted", "observed risky share"],
        [
            [
                f"{b['low']:.1f}–{b['high']:.1f}",
                num(b["count"]),
                num(b["mean_predicted"]),
                num(b["observed"]),
            ]
            for b in bins
        ],
        caption,
    )


def segment_table(rows: list[dict[str, Any]], caption: str) -> Table:
    return Table(
        ["segment", "value", "loans", "bad rate", "mean score", "flagged", "ROC-AUC", "KS"],
        [
            [
                r["segment"],
                r["value"],
                num(r["count"]),
                pct(r["bad_rate"]),
                num(r["mean_score"]),
                pct(r["flagged_share"]),
                num(r["roc_auc"]),
                num(r["ks"]),
            ]
            for r in rows
        ],
        caption,
    )


def policy_text(policy: dict[str, Any]) -> list[str]:
    """What decides, in sentences: the threshold policy and its inputs, calibration, the label policy."""
    threshold = num(policy.get("threshold"))
    if policy.get("threshold_policy") == "expected_cost":
        rule = (
            f"Threshold {threshold}, by the expected-cost policy: the validation threshold with the least "
            f"{num(policy.get('cost_bad_approved'), 2)} × (bad loans approved) + "
            f"{num(policy.get('cost_good_declined'), 2)} × (good loans declined); "
            f"{num(policy.get('valid_cost_per_loan'))} per validation loan."
        )
    else:
        rule = (
            f"Threshold {threshold}, by the F1 policy: the best validation F1 among thresholds with precision ≥ "
            f"{num(policy.get('min_precision'), 2)} and recall ≥ {num(policy.get('min_recall'), 2)}."
        )
    cal = policy.get("calibration") or {}
    if cal.get("applied"):
        calibration = (
            f"Calibrated ({cal.get('method')}, fitted on validation): the model's validation ECE "
            f"{num(cal.get('valid_ece_uncalibrated'))} exceeded {num(cal.get('max_ece'), 3)}; after calibration "
            f"{num(cal.get('valid_ece_calibrated'))}. Served probabilities, the threshold and every metric here "
            "are calibrated ones."
        )
    else:
        calibration = (
            f"Not calibrated: the validation ECE {num(cal.get('valid_ece_uncalibrated'))} is within "
            f"{num(cal.get('max_ece'), 3)}."
        )
    return [rule, calibration, f"Label policy: {policy.get('label_policy', 'seed')}."]


def evaluation_sections(report: dict[str, Any], plots: list[str] | None = None) -> list[Section]:
    """The metrics, deciles, calibration, segments and stability sections of an evaluation report."""
    plots = plots or []
    metrics, slices, stability = report["metrics"], report["slices"], report["stability"]
    boot = report.get("settings", {}).get("bootstrap_samples")
    seg_min = report.get("settings", {}).get("segment_min_count")
    return [
        Section(
            "Metrics",
            [
                f"Validation chooses the threshold; test is the most recent slice, never seen in training. "
                f"Intervals: percentile bootstrap, {boot} resamples.",
                *policy_text(report["policy"]),
            ],
            tables=[metrics_table(metrics)],
        ),
        Section(
            "Decile table",
            ["Loans in ten equal groups by score, riskiest first."],
            tables=[
                decile_table(slices["test"]["deciles"], "test"),
                decile_table(slices["valid"]["deciles"], "validation"),
            ],
            plots=[p for p in plots if p == "deciles.png"],
        ),
        Section(
            "Calibration",
            [
                f"Expected calibration error: validation {num(metrics.get('valid_ece'))}, test "
                f"{num(metrics.get('test_ece'))} (ten equal-width bins)."
            ],
            tables=[calibration_table(slices["test"]["calibration"], "test")],
            plots=[p for p in plots if p == "reliability.png"],
        ),
        Section(
            "Segments",
            [f"Test loans by state, lead type and pay frequency; segments under {seg_min} loans left out."],
            tables=[segment_table(slices["test"]["segments"], "test")],
        ),
        Section(
            "Stability baseline",
            [
                f"Population stability index of the score, train → test: {num(stability['score_psi'])} "
                "(below 0.1 stable, 0.1–0.25 moderate shift, above 0.25 major). The ten most shifted features "
                "are the baseline drift monitoring compares against."
            ],
            tables=[
                Table(
                    ["feature", "PSI train → test"],
                    [[r["feature"], num(r["psi"])] for r in stability["feature_psi"]],
                )
            ],
        ),
    ]


# --- templates ----------------------------------------------------------------------------------------------

_ENV = jinja2.Environment(autoescape=False, trim_blocks=True, lstrip_blocks=True)  # Markdown: no HTML escapes
_HTML_ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")

MARKDOWN_SECTIONS = _ENV.from_string(
    """{% for s in sections %}
## {{ s.title }}

{% for p in s.paragraphs %}
{{ p }}

{% endfor %}
{% for b in s.bullets %}
- {{ b }}
{% endfor %}
{% if s.bullets %}

{% endif %}
{% for t in s.tables %}
{% if t.caption %}
*{{ t.caption }}*

{% endif %}
| {{ t.headers | map("cell") | join(" | ") }} |
|{% for h in t.headers %}---|{% endfor %}

{% for row in t.rows %}
| {{ row | map("cell") | join(" | ") }} |
{% endfor %}

{% endfor %}
{% for plot in s.plots %}
![{{ captions.get(plot, plot) }}]({{ plots_dir }}/{{ plot }})

{% endfor %}
{% endfor %}"""
)

HTML_PAGE = _HTML_ENV.from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}caption{text-align:left;font-style:italic}
img{max-width:100%;display:block;margin:.5rem 0}figcaption{font-size:.9em;color:#555}
</style></head><body>
<h1>{{ title }}</h1>
{% for s in sections %}
<section><h2>{{ s.title }}</h2>
{% for p in s.paragraphs %}<p>{{ p }}</p>
{% endfor %}
{% if s.bullets %}<ul>{% for b in s.bullets %}<li>{{ b }}</li>{% endfor %}</ul>{% endif %}
{% for t in s.tables %}<table>{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<tr>{% for h in t.headers %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
{% for plot in s.plots %}<figure><img alt="{{ captions.get(plot, plot) }}" src="{{ images[plot] }}">
<figcaption>{{ captions.get(plot, plot) }}</figcaption></figure>
{% endfor %}
</section>
{% endfor %}
</body></html>
"""
)


def markdown_of(sections: list[Section]) -> str:
    return MARKDOWN_SECTIONS.render(sections=sections, captions=PLOT_CAPTIONS, plots_dir=PLOTS_DIR)


def evaluation_markdown(report: dict[str, Any]) -> str:
    """The credit-grade sections of an evaluation report as Markdown (the Prefect summary's second half)."""
    return markdown_of(evaluation_sections(report))


# --- the whole card -----------------------------------------------------------------------------------------
