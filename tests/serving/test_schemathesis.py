"""Property-based run of schemathesis over /openapi.json against the WSGI app (no network), or against a running
service (LOANRISK_TEST_SERVICE_URL, see remote.py): no input gives a 5xx, and valid requests get answers that
match the documented status codes, content types and schemas."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode, checks

from serving.openapi import openapi_document
from tests.serving.remote import service_url

_PATHS = openapi_document()["paths"]
OPERATIONS = [(path, method) for path, ops in _PATHS.items() for method in ops]
# Negative cases (bodies that break the schema) exist only for operations that take a body.
CASES = [(path, method, GenerationMode.POSITIVE) for path, method in OPERATIONS] + [
    (path, method, GenerationMode.NEGATIVE)
    for path, method in OPERATIONS
    if "requestBody" in _PATHS[path][method]
]
POSITIVE_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(contract_app):
    url = service_url()
    if url is not None:  # a running service (the built image's container)
        return schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)
    return schemathesis.openapi.from_wsgi("/openapi.json", contract_app)


@pytest.mark.parametrize("path, method, mode", CASES, ids=[f"{m.upper()} {p} {g.value}" for p, m, g in CASES])
def test_schemathesis(api_schema, path: str, method: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    examples = 25 if mode is GenerationMode.POSITIVE else 15

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if mode is GenerationMode.POSITIVE:
            case.call_and_validate(checks=POSITIVE_CHECKS)
        else:  # bodies that break the schema: any 4xx or 200, never a 5xx
            response = case.call()
            assert response.status_code < 500, (case.body, response.text[:500])

    run()
