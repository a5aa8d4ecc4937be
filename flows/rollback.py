"""The rollback flow: plan → the restored image pulled by digest and smoke-tested → commit → converge.

No build and no deploy lock; refused when the champion changed since it was asked (``--from``): docs/deploy.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow

from flows.deploy import release_error_fields
from tasks.common import cli_run
from tasks.registry import versions
from tasks.registry.aliases import Alias
from tasks.release.candidate import prepare_candidate
from tasks.release.converge import converge
from tasks.release.ledger import one_error
from tasks.release.plan import commit_task, plan_rollback_task
from tasks.release.record import operator
from tasks.settings import configure_environment, get_settings


@flow(name="loan-risk-rollback", log_prints=False)
@one_error
def rollback_flow(
    steps: int = 1,
    to_digest: str | None = None,
    from_version: str | None = None,
    reason: str | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """Restore an earlier release's image (``steps`` back, or ``to_digest``), leaving ``from_version``."""
    settings = get_settings()
    plan = plan_rollback_task(settings, steps, to_digest, from_version, reason, requested_by)
    with tempfile.TemporaryDirectory(prefix="loan-risk-rollback-") as tmp:
        candidate = prepare_candidate(settings, plan.version, plan.reuse_digest, Path(tmp), None)
    entry = commit_task(settings, plan, candidate, None)
    released = converge(settings)
    return {
        **plan.summary(),
        **released,
        "status": "rolled-back",
        "entry": entry.seq,
        "digest": entry.digest,
        "rolled_back_from": entry.from_version,
        "smoke": candidate.smoke,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: run the rollback flow and print its result as one JSON line."""
    configure_environment()
    parser = argparse.ArgumentParser(prog="python -m flows.rollback", description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--steps", type=int, default=1, help="how many distinct releases back (default 1)")
    target.add_argument("--to-digest", help="restore the release that served this image digest (sha256:...)")
    parser.add_argument(
        "--from", dest="from_version", help="the champion this rollback leaves (default: today's)"
    )
    parser.add_argument("--reason", help="why (recorded)")
    args = parser.parse_args(argv)
    if args.from_version is None:  # the champion when it was asked, not when the run starts
        champion = versions.version_by_alias(get_settings(), Alias.CHAMPION)
        args.from_version = str(champion.version) if champion is not None else None
    args.requested_by = operator()
    return cli_run(lambda: rollback_flow(**vars(args)), release_error_fields)


if __name__ == "__main__":
    sys.exit(main())
