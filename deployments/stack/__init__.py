"""The shared stack: PostgreSQL, a Prefect server and an MLflow server on it, the image registry, and workers.

Two descriptions of the same services: ``compose.yaml`` (Compose specification) for teams that run Docker
Compose, and :class:`Stack`, which starts them as local processes on a machine without it (the tests and CI):

    python -m deployments.stack up [--workers N] [--state-dir DIR] [--host ADDR]
    python -m deployments.stack status | env | down [--purge]

    from deployments.stack import Stack
    with Stack(tmp_path / "stack", workers=2) as urls:   # StackUrls; urls.env() points a process at the stack
        ...
"""

from deployments.stack.launcher import ServiceStatus, Stack, StackUrls

__all__ = ["ServiceStatus", "Stack", "StackUrls"]
