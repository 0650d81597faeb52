"""Schemathesis over the service's own OpenAPI schema (fake engine, lifespan running): valid and
invalid (negative) requests for every operation; no response may be a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from gpr.serve.app import Settings, create_app
from tests.serve.test_app import FakeEngine

schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(FakeEngine(), Settings(max_wait_ms=0.5))
)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True
)


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_5xx(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
