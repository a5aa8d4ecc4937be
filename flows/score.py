"""The batch scoring flow: a registered model version scores a file of loan applications.

Outputs go only under the setting ``score_output_root``; prints one JSON line (docs/batch-scoring.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow

from tasks.common import cli_run
from tasks.monitoring.score_files import output_paths
from tasks.monitoring.scoring import fetch_model_task, score_task
from tasks.settings import configure_environment, get_settings


@flow(name="loan-risk-score", log_prints=False)
def score_flow(
    input: str,
    output: str,
    alias: str | None = None,
    model_version: str | None = None,
    clarity: str | None = None,
    rejects: str | None = None,
    bundle: str | None = None,
    reasons: str | None = None,
) -> dict[str, Any]:
    """Score ``input`` into ``output`` (under ``score_output_root``) with a version (default: champion)."""
    settings = get_settings()
    output_paths(settings.score_root, output, rejects)  # refused before fetch-model
    with tempfile.TemporaryDirectory(prefix="loanrisk-score-") as tmp:
        bundle_dir = (
            Path(bundle) if bundle else fetch_model_task(settings, model_version, alias, Path(tmp) / "bundle")
        )
        return score_task(settings, bundle_dir, input, output, clarity, rejects, reasons)


def main(argv: list[str] | None = None) -> int:
    """CLI: run the scoring flow and print its result as one JSON line."""
    configure_environment()
    parser = argparse.ArgumentParser(prog="python -m flows.score", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="applications: CSV or Parquet with the source files' field names")
    parser.add_argument("--output", required=True, help="scores: .csv or .parquet, under score_output_root")
    parser.add_argument("--clarity", help="the clarity file, when INPUT is loan.csv alone (joined here)")
    parser.add_argument("--rejects", help="list bad rows here (under score_output_root), score the rest")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--alias", help="score with the version this alias points to (default: champion)")
    model.add_argument("--model-version", help="score with this registered version")
    model.add_argument("--bundle", help="score with a local bundle directory instead of the registry")
    reasons = "reason codes for the rows labelled risky (default: setting score_reasons), all rows, or none"
    parser.add_argument("--reasons", choices=("risky", "all", "none"), help=reasons)
    args = parser.parse_args(argv)

    def run() -> dict[str, Any]:
        # refused here: no flow run, no traceback
        output_paths(get_settings().score_root, args.output, args.rejects)
        return score_flow(**vars(args))

    return cli_run(run)


if __name__ == "__main__":
    sys.exit(main())
