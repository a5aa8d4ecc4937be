"""The model card: rendered from the bundle alone (Markdown and self-contained HTML), served at GET /model/card,
and opened in a real headless browser (Debian's chromium) where every section and every plot renders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serving.app import create_app
from serving.bundle import CARD_HTML, CARD_MARKDOWN
from tests.model.conftest import Trained, package

SECTIONS = (
    "Intended use",
    "Data",
    "Training",
    "Metrics",
    "Decile table",
    "Calibration",
    "Segments",
    "Stability baseline",
    "Reason codes",
    "Limitations",
)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


@pytest.fixture(scope="module")
def card_bundle(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package(trained, tmp_path_factory.mktemp("card") / "bundle", calibration_max_ece=0.0)[0]


def test_the_card_says_what_a_reviewer_needs(card_bundle: Path, trained: Trained) -> None:
    md = (card_bundle / CARD_MARKDOWN).read_text()
    assert md.startswith("# Model card: loan-risk v7\n")
    for title in SECTIONS:
        assert f"\n## {title}\n" in md, title
    counts = trained.stats["label_policies"]
    assert counts["seed"]["labelled"] == trained.stats["labelled_loans"]  # this model's policy
    assert counts["matured"]["left_out_not_final"] > 0
    assert f"| matured | {counts['matured']['labelled']:,} |" in md
    assert "ab" * 32 in md and "no reject inference" in md and "Censoring" in md
    assert "Calibrated (platt, fitted on validation)" in md and "by the F1 policy" in md
    assert "](plots/reliability.png)" in md and "](plots/deciles.png)" in md
    assert "&#39;" not in md and "anon_ssn" not in md


def test_get_model_card_serves_html_markdown_and_404_without_one(card_bundle: Path, tmp_path: Path) -> None:
    client = create_app({"bundle_dir": card_bundle}).test_client()
    html = client.get("/model/card")
    assert html.status_code == 200 and html.mimetype == "text/html"
    assert html.get_data() == (card_bundle / CARD_HTML).read_bytes()
    md = client.get("/model/card", headers={"Accept": "text/markdown"})
    assert md.status_code == 200 and md.mimetype == "text/markdown"
    assert md.get_data(as_text=True).startswith("# Model card: loan-risk v7")
    bare = tmp_path / "bare"
    shutil.copytree(card_bundle, bare)
    (bare / CARD_HTML).unlink()
    (bare / CARD_MARKDOWN).unlink()
    missing = create_app({"bundle_dir": bare}).test_client().get("/model/card")
    assert missing.status_code == 404 and missing.get_json()["error"] == "no_model_card"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `bash tests/infra/services.sh install` installs it")
        pytest.skip("chromium is not installed (bash tests/infra/services.sh install)")
    return found


PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter((i) => i.complete && i.naturalWidth > 0).length,
    headings: [...document.querySelectorAll("h2")].map((h) => h.textContent),
    tables: document.querySelectorAll("table").length,
  });
  document.body.appendChild(out);
});
</script>"""


def test_the_html_card_renders_in_a_real_browser(card_bundle: Path, tmp_path: Path) -> None:
    html = (card_bundle / CARD_HTML).read_text()
    assert 'src="data:image/png;base64,' in html and not re.search(r"src=\"(https?:|plots/)", html)
    page = tmp_path / "card.html"  # the card alone, with a probe reading the rendered page
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no probe in the dumped DOM: {proc.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["headings"] == list(SECTIONS)
    assert probe["images"] == 2 and probe["decoded"] == 2, probe
    assert probe["tables"] >= 10
