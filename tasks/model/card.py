"""The model card as Markdown and self-contained HTML, from the bundle's files alone (at packaging and again when
registration stamps the version); the evaluate stage's summary reuses :func:`evaluation_markdown`."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from serving.bundle import CARD_HTML, CARD_MARKDOWN, EVALUATION_FILE, PLOTS_DIR
from serving.reason_table import TABLE_FILE, ReasonTable

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
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def pct(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) or not math.isfinite(value) else f"{100 * value:.1f}%"


METRIC_ROWS = {
    "roc_auc": "ROC-AUC",
    "auc_ci": "ROC-AUC 95% interval",
    "gini": "Gini (2·AUC − 1)",
    "ks": "KS",
    "ks_ci": "KS 95% interval",
    "pr_auc": "PR-AUC",
    "precision": "precision at the threshold",
    "recall": "recall at the threshold",
    "f1": "F1 at the threshold",
    "ece": "expected calibration error",
    "brier": "Brier score",
    "log_loss": "log loss",
}


def metrics_table(metrics: dict[str, Any]) -> Table:
    def cell(prefix: str, key: str) -> str:
        if not key.endswith("_ci"):
            return num(metrics.get(f"{prefix}_{key}"))
        low, high = (metrics.get(f"{prefix}_{key}_{end}") for end in ("low", "high"))
        return "n/a" if low is None or high is None else f"[{num(low)}, {num(high)}]"

    rows = [[label, cell("valid", key), cell("test", key)] for key, label in METRIC_ROWS.items()]
    return Table(["metric", "validation", "test"], rows)


def _table(
    columns: dict[str, Callable[[dict[str, Any]], str]], rows: list[dict[str, Any]], caption: str
) -> Table:
    return Table(list(columns), [[cell(r) for cell in columns.values()] for r in rows], caption)


def _fmt(key: str, fmt: Callable[..., str] = num) -> Callable[[dict[str, Any]], str]:
    return lambda row: fmt(row[key])


DECILE_COLUMNS = {
    "decile": _fmt("decile", str),
    "scores": lambda r: f"{r['min_score']:.3f}–{r['max_score']:.3f}",
    "loans": _fmt("count"),
    "bads": _fmt("bads"),
    "bad rate": _fmt("bad_rate", pct),
    "bads captured (cum.)": _fmt("cum_bad_share", pct),
    "lift": lambda r: num(r["lift"], 2),
}
CALIBRATION_COLUMNS = {
    "probability bin": lambda b: f"{b['low']:.1f}–{b['high']:.1f}",
    "loans": _fmt("count"),
    "mean predicted": _fmt("mean_predicted"),
    "observed risky share": _fmt("observed"),
}
SEGMENT_COLUMNS = {
    "segment": _fmt("segment", str),
    "value": _fmt("value", str),
    "loans": _fmt("count"),
    "bad rate": _fmt("bad_rate", pct),
    "mean score": _fmt("mean_score"),
    "flagged": _fmt("flagged_share", pct),
    "ROC-AUC": _fmt("roc_auc"),
    "KS": _fmt("ks"),
}


def policy_text(policy: dict[str, Any]) -> list[str]:
    """What decides, in sentences: the threshold policy and its inputs, calibration, the label policy."""
    threshold, cal = num(policy.get("threshold")), policy.get("calibration") or {}
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
    boot, seg_min = (report.get("settings", {}).get(k) for k in ("bootstrap_samples", "segment_min_count"))
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
                _table(DECILE_COLUMNS, slices[key]["deciles"], name)
                for key, name in (("test", "test"), ("valid", "validation"))
            ],
            plots=[p for p in plots if p == "deciles.png"],
        ),
        Section(
            "Calibration",
            [
                f"Expected calibration error: validation {num(metrics.get('valid_ece'))}, test "
                f"{num(metrics.get('test_ece'))} (ten equal-width bins)."
            ],
            tables=[_table(CALIBRATION_COLUMNS, slices["test"]["calibration"], "test")],
            plots=[p for p in plots if p == "reliability.png"],
        ),
        Section(
            "Segments",
            [f"Test loans by state, lead type and pay frequency; segments under {seg_min} loans left out."],
            tables=[_table(SEGMENT_COLUMNS, slices["test"]["segments"], "test")],
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


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


HTML_PAGE = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(
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
    lines = []
    for s in sections:
        lines += [f"## {s.title}", "", *(line for p in s.paragraphs for line in (p, ""))]
        lines += [f"- {b}" for b in s.bullets] + ([""] if s.bullets else [])
        for t in s.tables:
            lines += [f"*{t.caption}*", ""] if t.caption else []
            rule = "|" + "---|" * len(t.headers)
            lines += [_markdown_row(t.headers), rule, *map(_markdown_row, t.rows), ""]
        lines += [line for p in s.plots for line in (f"![{PLOT_CAPTIONS.get(p, p)}]({PLOTS_DIR}/{p})", "")]
    return "".join(line + "\n" for line in lines)


def evaluation_markdown(report: dict[str, Any]) -> str:
    """The credit-grade sections of an evaluation report as Markdown."""
    return markdown_of(evaluation_sections(report))


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
        [[name, f.get("sha256", "?"), num(f.get("size"))] for name, f in (data.get("files") or {}).items()],
    )
    window = lambda key: [bounds.get(f"{key}_{end}", "?") for end in ("start", "end")]  # noqa: E731
    windows = [
        [name, *window(key), num(bounds.get(f"n_{key}")), pct(bounds.get(f"risky_share_{key}"))]
        for key, name in (("train", "train"), ("valid", "validation"), ("test", "test"))
    ]
    label_keys = ("labelled", "risky", "good", "left_out_not_final")
    label_rows = [
        [name + (" (this model)" if name == policy else ""), *(num(c.get(k)) for k in label_keys)]
        for name, c in counts.items()
    ]
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
            Table(["slice", "from", "to", "loans", "risky share"], windows),
            Table(["label policy", "labelled", "risky", "good", "left out (not final)"], label_rows),
        ],
    )


def _training_section(meta: dict[str, Any], context: dict[str, Any]) -> Section:
    training = context.get("training") or {}
    tuning = training.get("tuning") or {}
    params = meta.get("params") or {}
    constraints = ", ".join(f"{k} {v:+d}" for k, v in (training.get("monotone_constraints") or {}).items())
    return Section(
        "Training",
        [
            f"CatBoost, tuned with Optuna: {tuning.get('n_complete', '?')} complete trials, "
            f"{tuning.get('n_pruned', '?')} pruned; best validation ROC-AUC {num(tuning.get('best_value'))}. "
            f"Code commit: {training.get('code_commit', 'unknown')}. MLflow run: {meta.get('run_id') or 'n/a'}.",
            f"Monotone constraints: {constraints or 'none'}.",
        ],
        tables=[Table(["parameter", "value"], [[k, num(v)] for k, v in sorted(params.items())])],
    )


def _reasons_section(bundle_dir: Path) -> Section:
    if not (bundle_dir / TABLE_FILE).is_file():
        return Section(
            "Reason codes", ["This bundle carries no reason-code table: the service returns no reasons."]
        )
    table = ReasonTable.read(bundle_dir / TABLE_FILE)
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
    evaluation = bundle_dir / EVALUATION_FILE
    report = json.loads(evaluation.read_text()) if evaluation.is_file() else None
    plots = sorted(p.name for p in (bundle_dir / PLOTS_DIR).glob("*.png")) if report else []
    title = f"Model card: {meta.get('model_name', 'model')} v{meta.get('model_version') or 'unregistered'}"
    context = (report or {}).get("context") or {}
    decision = f"Decision threshold {num(meta.get('threshold'))}; created {meta.get('created_at') or 'n/a'}."
    sections = [
        Section(
            "Intended use", [*INTENDED_USE, decision], bullets=["Out of scope: " + u for u in OUT_OF_SCOPE]
        ),
        _data_section(meta, context),
        _training_section(meta, context),
    ]
    no_report = Section("Metrics", ["This bundle carries no evaluation report."])
    sections += evaluation_sections(report, plots) if report else [no_report]
    sections += [_reasons_section(bundle_dir), Section("Limitations", bullets=LIMITATIONS)]
    return title, sections, plots


def write_card(bundle_dir: str | Path) -> tuple[Path, Path]:
    """Render ``card.md`` (plots linked under ``plots/``) and ``card.html`` (plots embedded) into the bundle."""
    bundle_dir = Path(bundle_dir)
    title, sections, plots = card_sections(bundle_dir)
    encoded = lambda name: base64.b64encode((bundle_dir / PLOTS_DIR / name).read_bytes()).decode()  # noqa: E731
    images = {name: f"data:image/png;base64,{encoded(name)}" for name in plots}
    md, html = bundle_dir / CARD_MARKDOWN, bundle_dir / CARD_HTML
    md.write_text(f"# {title}\n\n{markdown_of(sections)}", encoding="utf-8")
    page = HTML_PAGE.render(title=title, sections=sections, images=images, captions=PLOT_CAPTIONS)
    html.write_text(page, encoding="utf-8")
    for path in (md, html):
        path.chmod(0o644)
    return md, html
