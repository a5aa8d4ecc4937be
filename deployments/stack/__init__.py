"""The shared stack (PostgreSQL, Prefect and MLflow servers, image registry, workers): ``compose.yaml`` for
Docker Compose, :class:`Stack` as local processes (``python -m deployments.stack``, ``with Stack(dir)``)."""

from deployments.stack.launcher import ServiceStatus, Stack, StackUrls

__all__ = ["ServiceStatus", "Stack", "StackUrls"]
