"""The deploy flow: plan (the gate) → tested image (build, push a build tag, pull back by digest, smoke test) →
commit (the ledger's compare-and-set) → converge (champion, version tag, latest, notes, GitHub release, history).

One error type leaves a run, ``ReleaseFailed``, whose ``committed`` (yes, no, unknown) says whether the champion
changed. The CLI (``--model-version``, ``--alias``, ``--force --reason``, ``--converge``, ``--history``):
docs/deploy.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow

from tasks.common import cli_run
from tasks.registry.aliases import Alias
from tasks.release.build import git_commit
from tasks.release.candidate import prepare_candidate
from tasks.release.converge import converge
from tasks.release.history import history_text, read_history
from tasks.release.ledger import one_error
from tasks.release.lock import release_lock
from tasks.release.plan import commit_task, plan_release_task
from tasks.release.record import operator
from tasks.settings import configure_environment, get_settings


@flow(name="loan-risk-deploy", log_prints=False)
@one_error
def deploy_flow(
    model_version: str | None = None,
    alias: str | None = Alias.CANDIDATE.value,
    force: bool = False,
    reason: str | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """Release a version the gate promoted over today's champion (``force`` with a ``reason`` overrides the gate)."""
    settings = get_settings()
    revision = git_commit()
    with (
        release_lock(settings.release) as lock,
        tempfile.TemporaryDirectory(prefix="loan-risk-deploy-") as tmp,
    ):
        plan = plan_release_task(settings, model_version, alias, force, reason, requested_by)
        if not plan.noop:
            candidate = prepare_candidate(settings, plan.version, plan.reuse_digest, Path(tmp), revision)
            entry = commit_task(settings, plan, candidate, revision)
    done = {**plan.summary(), **converge(settings), "lock": lock.summary()}
    if plan.noop:
        return {**done, "status": "already-released", "build": "none"}
    return {
        **done,
        "status": "released",
        "entry": entry.seq,
        "digest": entry.digest,
        "build": "built" if candidate.built else "reused",
        "build_id": candidate.build_id or None,
        "smoke": candidate.smoke,
    }


@flow(name="loan-risk-converge", log_prints=False)
@one_error
def converge_flow() -> dict[str, Any]:
    """Make the champion alias, the image tags, the notes and the GitHub release match the ledger's head."""
    return converge(get_settings(), committed="unknown")


def main(argv: list[str] | None = None) -> int:
    """CLI: run the deploy flow (or converge, or print the history) and print its result as one JSON line."""
    configure_environment()
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--model-version", help="the registered version to deploy")
    target.add_argument("--alias", help="deploy the version this alias points to (default: candidate)")
    target.add_argument("--converge", action="store_true", help="complete the tail of the last release")
    target.add_argument("--history", action="store_true", help="print every champion change")
    parser.add_argument("--json", action="store_true", help="with --history: one JSON object per change")
    parser.add_argument("--force", action="store_true", help="release a version the gate did not promote")
    parser.add_argument("--reason", help="why (required with --force, at least 10 characters; recorded)")
    args = parser.parse_args(argv)
    if args.force and len(" ".join((args.reason or "").split())) < 10:
        parser.error("--force needs a --reason of at least 10 characters")
    if args.history:
        rows, name = read_history(settings := get_settings()), settings.registry.model_name
        sys.stdout.write(
            "".join(json.dumps(r) + "\n" for r in rows) if args.json else history_text(rows, name)
        )
        return 0
    if args.converge:
        return cli_run(converge_flow, release_error_fields)
    return cli_run(
        lambda: deploy_flow(
            model_version=args.model_version,
            alias=args.alias or Alias.CANDIDATE.value,
            force=args.force,
            reason=args.reason,
            requested_by=operator(),
        ),
        release_error_fields,
    )


def release_error_fields(exc: Exception) -> dict[str, Any]:
    """What a failed release adds to the CLI's error line: the step, and whether the champion changed."""
    return {"step": getattr(exc, "step", None), "committed": getattr(exc, "committed", "no")}


if __name__ == "__main__":
    sys.exit(main())
