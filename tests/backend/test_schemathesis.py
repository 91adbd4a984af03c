"""Property-based API fuzzing with Schemathesis against the production app, in process.

Every operation of the OpenAPI schema gets generated requests, valid and invalid
(positive and negative generation modes): no response may be a 5xx, and every response
must match the schema documented for its status code. Bounded for ``make test``.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

MAX_EXAMPLES = 20


@pytest.fixture
def api_schema(client: TestClient) -> Any:
    """The app's own schema, loaded over ASGI once the model is loaded (``client``)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    schema.config.generation.update(max_examples=MAX_EXAMPLES)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples on every run: a failure reproduces
    database=None,  # and no .hypothesis/ directory in the working tree
)
def test_api_never_fails_and_matches_its_schema(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
