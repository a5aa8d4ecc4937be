"""The model card of a bundle, as Markdown and self-contained HTML, rendered from the bundle's files alone (at
packaging and again when registration stamps the version; the service only serves the files)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from serving.bundle import CARD_HTML, CARD_MARKDOWN, EVALUATION_FILE, PLOTS_DIR
from serving.reason_table import TABLE_FILE, ReasonTable
from tasks.model.card_tables import (
    HTML_PAGE,
    PLOT_CAPTIONS,
    Section,
    Table,
    evaluation_sections,
    markdown_of,
    num,
    pct,
)

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
    windows = Table(
        ["slice", "from", "to", "loans", "risky share"],
        [
            [name, *(bounds.get(f"{key}_{end}", "?") for end in ("start", "end")),
             num(bounds.get(f"n_{key}")), pct(bounds.get(f"risky_share_{key}"))]
            for key, name in (("train", "train"), ("valid", "validation"), ("test", "test"))
        ],
    )  # fmt: skip
    label_rows = [
        [name + (" (this model)" if name == policy else ""), num(c.get("labelled")), num(c.get("risky")),
         num(c.get("good")), num(c.get("left_out_not_final"))]
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
    no_report = [Section("Metrics", ["This bundle carries no evaluation report."])]
    sections += evaluation_sections(report, plots) if report else no_report
    sections += [_reasons_section(bundle_dir), Section("Limitations", bullets=LIMITATIONS)]
    return title, sections, plots


def write_card(bundle_dir: str | Path) -> tuple[Path, Path]:
    """Render the card into the bundle: ``card.md`` (plots linked as ``plots/<name>.png``) and ``card.html`` (one
    self-contained page, the plots embedded as data URIs); returns both paths."""
    bundle_dir = Path(bundle_dir)
    title, sections, plots = card_sections(bundle_dir)
    images = {
        name: "data:image/png;base64,"
        + base64.b64encode((bundle_dir / PLOTS_DIR / name).read_bytes()).decode()
        for name in plots
    }
    md, html = bundle_dir / CARD_MARKDOWN, bundle_dir / CARD_HTML
    md.write_text(f"# {title}\n\n{markdown_of(sections)}", encoding="utf-8")
    page = HTML_PAGE.render(title=title, sections=sections, images=images, captions=PLOT_CAPTIONS)
    html.write_text(page, encoding="utf-8")
    for path in (md, html):
        path.chmod(0o644)
    return md, html
