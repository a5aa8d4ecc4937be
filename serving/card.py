"""The model card of a bundle: Markdown and self-contained HTML (plots embedded as data URIs), rendered with jinja2.

Rendered from what the bundle holds, nothing else: ``bundle.json`` (version, threshold, metrics, data
fingerprint, parameters, decision policy, calibrator), ``evaluation.json`` (the evaluation report of
``tasks/model/evaluate.py`` plus the data and training context ``tasks/model/package.py`` adds), ``plots/*.png`` and the
reason-code table (``reason_codes.toml``). Training writes ``card.md`` and ``card.html`` into the bundle when it
packages it and again when registration stamps the version (:func:`write_card`), so the card is an MLflow artifact
of the version; the service answers ``GET /model/card`` with them.

The card's tables are built once as :class:`Table` rows and rendered by both templates; the Prefect summary of
the evaluate stage reuses :func:`evaluation_markdown`. Longer than ~400 lines on purpose: it is one document (its
fixed texts, its tables and the two templates that render them), read and reviewed as one.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from serving.reasons import TABLE_FILE, ReasonTable

EVALUATION_FILE = "evaluation.json"
CARD_MARKDOWN = "card.md"
CARD_HTML = "card.html"
PLOTS_DIR = "plots"
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


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) or not math.isfinite(value) else f"{100 * value:.1f}%"


def _interval(metrics: dict[str, Any], prefix: str, name: str) -> str:
    low, high = metrics.get(f"{prefix}_{name}_ci_low"), metrics.get(f"{prefix}_{name}_ci_high")
    return "n/a" if low is None or high is None else f"[{_num(low)}, {_num(high)}]"


# --- the evaluation sections (card and Prefect summary) ------------------------------------------------------


def metrics_table(metrics: dict[str, Any]) -> Table:
    rows = [
        ["ROC-AUC", *(_num(metrics.get(f"{s}_roc_auc")) for s in ("valid", "test"))],
        ["ROC-AUC 95% interval", _interval(metrics, "valid", "auc"), _interval(metrics, "test", "auc")],
        ["Gini (2·AUC − 1)", *(_num(metrics.get(f"{s}_gini")) for s in ("valid", "test"))],
        ["KS", *(_num(metrics.get(f"{s}_ks")) for s in ("valid", "test"))],
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
        rows.append([label, *(_num(metrics.get(f"{s}_{key}")) for s in ("valid", "test"))])
    return Table(["metric", "validation", "test"], rows)


def decile_table(rows: list[dict[str, Any]], caption: str) -> Table:
    return Table(
        ["decile", "scores", "loans", "bads", "bad rate", "bads captured (cum.)", "lift"],
        [
            [
                str(r["decile"]),
                f"{r['min_score']:.3f}–{r['max_score']:.3f}",
                _num(r["count"]),
                _num(r["bads"]),
                _pct(r["bad_rate"]),
                _pct(r["cum_bad_share"]),
                _num(r["lift"], 2),
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
                _num(b["count"]),
                _num(b["mean_predicted"]),
                _num(b["observed"]),
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
                _num(r["count"]),
                _pct(r["bad_rate"]),
                _num(r["mean_score"]),
                _pct(r["flagged_share"]),
                _num(r["roc_auc"]),
                _num(r["ks"]),
            ]
            for r in rows
        ],
        caption,
    )


def policy_text(policy: dict[str, Any]) -> list[str]:
    """What decides, in sentences: the threshold policy and its inputs, calibration, the label policy."""
    threshold = _num(policy.get("threshold"))
    if policy.get("threshold_policy") == "expected_cost":
        rule = (
            f"Threshold {threshold}, by the expected-cost policy: the validation threshold with the least "
            f"{_num(policy.get('cost_bad_approved'), 2)} × (bad loans approved) + "
            f"{_num(policy.get('cost_good_declined'), 2)} × (good loans declined); "
            f"{_num(policy.get('valid_cost_per_loan'))} per validation loan."
        )
    else:
        rule = (
            f"Threshold {threshold}, by the F1 policy: the best validation F1 among thresholds with precision ≥ "
            f"{_num(policy.get('min_precision'), 2)} and recall ≥ {_num(policy.get('min_recall'), 2)}."
        )
    cal = policy.get("calibration") or {}
    if cal.get("applied"):
        calibration = (
            f"Calibrated ({cal.get('method')}, fitted on validation): the model's validation ECE "
            f"{_num(cal.get('valid_ece_uncalibrated'))} exceeded {_num(cal.get('max_ece'), 3)}; after calibration "
            f"{_num(cal.get('valid_ece_calibrated'))}. Served probabilities, the threshold and every metric here "
            "are calibrated ones."
        )
    else:
        calibration = (
            f"Not calibrated: the validation ECE {_num(cal.get('valid_ece_uncalibrated'))} is within "
            f"{_num(cal.get('max_ece'), 3)}."
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
                f"Expected calibration error: validation {_num(metrics.get('valid_ece'))}, test "
                f"{_num(metrics.get('test_ece'))} (ten equal-width bins)."
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
                f"Population stability index of the score, train → test: {_num(stability['score_psi'])} "
                "(below 0.1 stable, 0.1–0.25 moderate shift, above 0.25 major). The ten most shifted features "
                "are the baseline drift monitoring compares against."
            ],
            tables=[
                Table(
                    ["feature", "PSI train → test"],
                    [[r["feature"], _num(r["psi"])] for r in stability["feature_psi"]],
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

INTENDED_USE = [
    "Estimates the probability that a funded consumer instalment loan ends in collection, charge-off, "
    "settlement or a returned item, from the application and its Clarity underwriting report, at "
    "application time.",
    "Intended use: one input to an underwriting decision reviewed under the lender's credit policy, with the "
    "reason codes of the service as the basis of an adverse-action notice (Regulation B, 12 CFR 1002.9).",
]
OUT_OF_SCOPE = [
    "Decisions without human-reviewed credit policy around them, or on products other than these loans.",
    "Applicants unlike the funded population it learnt from (see Limitations), or populations outside the "
    "states and lead types it saw.",
    "Pricing, collections or marketing decisions; any use of the score as a measure of a person's character.",
]
LIMITATIONS = [
    "Trained only on funded loans: applications that were declined or withdrawn have no outcome, so the model "
    "never saw the people the previous policy turned away (no reject inference). Its risk for applicants unlike "
    "the funded population is an extrapolation.",
    "Censoring: loans still running ('New Loan', 'Pending Paid Off') have no final outcome. The 'seed' label "
    "policy counts them good, which understates risk most in the recent months, the test slice among them; "
    "'matured' leaves them out, at the cost of fewer and older labels.",
    "The time split tests on the most recent loans only; performance drifts as applicants, lead sources and "
    "the economy change: compare live score PSI against the stability baseline above.",
    "Segment metrics on few loans are noisy: read them with their counts.",
]
LABEL_POLICY_TEXT = {
    "seed": "counts loans not final yet ('New Loan', 'Pending Paid Off') as good",
    "matured": "leaves loans not final yet ('New Loan', 'Pending Paid Off') out",
}


def _data_section(meta: dict[str, Any], context: dict[str, Any]) -> Section:
    data = meta.get("data_fingerprint") or {}
    bounds = context.get("boundaries") or {}
    labels = context.get("labels") or {}
    policy = labels.get("label_policy", "seed")
    counts = labels.get("label_policies") or {}
    files = Table(
        ["file", "sha256", "bytes"],
        [[name, f.get("sha256", "?"), _num(f.get("size"))] for name, f in (data.get("files") or {}).items()],
    )
    windows = Table(
        ["slice", "from", "to", "loans", "risky share"],
        [
            [name, bounds.get(f"{key}_start", "?"), bounds.get(f"{key}_end", "?"), _num(bounds.get(f"n_{key}")),
             _pct(bounds.get(f"risky_share_{key}"))]
            for key, name in (("train", "train"), ("valid", "validation"), ("test", "test"))
        ],
    )  # fmt: skip
    label_rows = [
        [name + (" (this model)" if name == policy else ""), _num(c.get("labelled")), _num(c.get("risky")),
         _num(c.get("good")), _num(c.get("left_out_not_final"))]
        for name, c in counts.items()
    ]  # fmt: skip
    return Section(
        "Data",
        [
            f"Source: {data.get('source', '?')}; Hub revision: {data.get('revision') or 'n/a'}; content sha256: "
            f"{data.get('content_sha256') or 'n/a'}.",
            f"Label policy '{policy}': {LABEL_POLICY_TEXT.get(policy, '')}. Loans each policy labels, from the "
            "same files: the choice moves loans that are not final out of the good class, never into the risky "
            "one, so it changes the bad rate the model learns and the recent months most (censoring).",
        ],
        tables=[
            files,
            windows,
            Table(["label policy", "labelled", "risky", "good", "left out (not final)"], label_rows),
        ],
    )


def _training_section(meta: dict[str, Any], context: dict[str, Any]) -> Section:
    training = context.get("training") or {}
    tuning = training.get("tuning") or {}
    params = meta.get("params") or {}
    return Section(
        "Training",
        [
            f"CatBoost, tuned with Optuna: {tuning.get('n_complete', '?')} complete trials, "
            f"{tuning.get('n_pruned', '?')} pruned; best validation ROC-AUC {_num(tuning.get('best_value'))}. "
            f"Code commit: {training.get('code_commit', 'unknown')}. MLflow run: {meta.get('run_id') or 'n/a'}.",
            "Monotone constraints: "
            + (
                ", ".join(f"{k} {v:+d}" for k, v in (training.get("monotone_constraints") or {}).items())
                or "none"
            )
            + ".",
        ],
        tables=[Table(["parameter", "value"], [[k, _num(v)] for k, v in sorted(params.items())])],
    )


def _reasons_section(bundle_dir: Path) -> Section:
    path = bundle_dir / TABLE_FILE
    if not path.is_file():
        return Section(
            "Reason codes", ["This bundle carries no reason-code table: the service returns no reasons."]
        )
    table = ReasonTable.read(path)
    rows = [[r.code, r.text, ", ".join(r.features)] for r in table.reasons]
    return Section(
        "Reason codes",
        [
            "Declined applicants are told the principal reasons: the service's reason codes rank the families of "
            f"features that raised this applicant's risk most (the model's own SHAP values; table version "
            f"{table.version}, `{TABLE_FILE}` in the bundle)."
        ],
        tables=[Table(["code", "text", "features"], rows)],
    )


def card_sections(bundle_dir: Path) -> tuple[str, list[Section], list[str]]:
    """The card's title, sections and plot files, from the bundle alone."""
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    evaluation_path = bundle_dir / EVALUATION_FILE
    report = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else None
    plots = sorted(p.name for p in (bundle_dir / PLOTS_DIR).glob("*.png")) if report else []
    title = f"Model card: {meta.get('model_name', 'model')} v{meta.get('model_version') or 'unregistered'}"
    context = (report or {}).get("context") or {}
    sections = [
        Section(
            "Intended use",
            INTENDED_USE
            + [
                f"Decision threshold {_num(meta.get('threshold'))}; created {meta.get('created_at') or 'n/a'}."
            ],
            bullets=["Out of scope: " + use for use in OUT_OF_SCOPE],
        ),
        _data_section(meta, context),
        _training_section(meta, context),
    ]
    if report:
        sections += evaluation_sections(report, plots)
    else:
        sections.append(Section("Metrics", ["This bundle carries no evaluation report."]))
    sections += [_reasons_section(bundle_dir), Section("Limitations", bullets=LIMITATIONS)]
    return title, sections, plots


def render_markdown(bundle_dir: str | Path) -> str:
    """The card as Markdown (plots linked as ``plots/<name>.png`` beside it in the bundle)."""
    title, sections, _ = card_sections(Path(bundle_dir))
    return f"# {title}\n\n{markdown_of(sections)}"


def render_html(bundle_dir: str | Path) -> str:
    """The card as one self-contained HTML page: the plots embedded as ``data:image/png;base64`` URIs."""
    bundle_dir = Path(bundle_dir)
    title, sections, plots = card_sections(bundle_dir)
    images = {
        name: "data:image/png;base64,"
        + base64.b64encode((bundle_dir / PLOTS_DIR / name).read_bytes()).decode()
        for name in plots
    }
    return HTML_PAGE.render(title=title, sections=sections, images=images, captions=PLOT_CAPTIONS)


def write_card(bundle_dir: str | Path) -> tuple[Path, Path]:
    """Render the card into the bundle (``card.md``, ``card.html``); returns both paths."""
    bundle_dir = Path(bundle_dir)
    md, html = bundle_dir / CARD_MARKDOWN, bundle_dir / CARD_HTML
    md.write_text(render_markdown(bundle_dir), encoding="utf-8")
    html.write_text(render_html(bundle_dir), encoding="utf-8")
    for path in (md, html):
        path.chmod(0o644)
    return md, html
