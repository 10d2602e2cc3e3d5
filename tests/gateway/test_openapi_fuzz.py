"""Schemathesis against the gateway's own OpenAPI schema: no input makes it fail (5xx), and
every documented response matches the schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.stack import Stack, running_stack

# Event streams never end by themselves; they have tests of their own (tests/e2e).
_STREAMS = r"/events$"


@pytest.fixture(scope="module")
def fuzzed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Generous rate limits: the fuzzer sends hundreds of requests a second.
    env = {"CRUCIBLE_RATE_LIMIT__BURST": "100000", "CRUCIBLE_RATE_LIMIT__REQUESTS_PER_S": "1e5"}
    with running_stack(tmp_path_factory.mktemp("fuzz"), workers=1, env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def api_schema(fuzzed_stack: Stack) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzzed_stack.url}/openapi.json")
    return schema.exclude(path_regex=_STREAMS)


schema = schemathesis.pytest.from_fixture("api_schema")


def has_a_detail(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """Every refusal says what to fix: a JSON body with a `detail`."""
    if 400 <= response.status_code < 500:
        assert "detail" in response.json(), f"{response.status_code} without a detail"
    return True


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_gateway_honours_its_schema(case: schemathesis.Case, fuzzed_stack: Stack) -> None:
    case.call_and_validate(
        headers=fuzzed_stack.headers(),
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        additional_checks=[has_a_detail],
        timeout=30,
    )
