"""The shared stack (PostgreSQL, Prefect and MLflow servers on it, the image registry, workers), described
twice: ``compose.yaml`` for teams that run Docker Compose, and :class:`Stack`, local processes (tests, CI):

    python -m deployments.stack up [--workers N] [--state-dir DIR] [--host ADDR]
    python -m deployments.stack status | env | down [--purge]
    with Stack(tmp_path / "stack", workers=2) as urls:   # StackUrls; urls.env() points a process at the stack
"""

from deployments.stack.launcher import ServiceStatus, Stack, StackUrls

__all__ = ["ServiceStatus", "Stack", "StackUrls"]
