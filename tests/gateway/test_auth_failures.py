"""Failing to authenticate needs no key: past a budget per client address, the gateway
answers 429 and writes no audit record, so that nobody can grow the audit log at will."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bus.audit import AuditAction
from tests.bus_state import audit_records
from tests.stack import Stack, start_stack

_BUDGET = 5


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state: Path = tmp_path_factory.mktemp("auth-failures")
    stack = start_stack(
        state,
        workers=1,
        env={
            "CRUCIBLE_AUTH_FAILURES__BURST": str(_BUDGET),
            "CRUCIBLE_AUTH_FAILURES__REQUESTS_PER_S": "0.01",
        },
    )
    try:
        yield stack
    finally:
        stack.stop()


def test_failed_authentications_past_the_budget_get_429_and_no_audit_record(
    strict: Stack,
) -> None:
    spec = {"language": "python", "code": "print(1)"}
    statuses = [
        httpx.post(
            f"{strict.url}/v1/jobs", json=spec, headers={"Authorization": "Bearer wrong"}
        ).status_code
        for _ in range(4 * _BUDGET)
    ]
    assert statuses[:_BUDGET] == [401] * _BUDGET
    assert set(statuses[_BUDGET:]) == {429}
    # A bad stream token counts the same.
    assert httpx.get(f"{strict.url}/v1/jobs/j-{'0' * 32}/events?token=x").status_code == 429
    # A caller with a key is not held back by the failures from its address.
    good = httpx.post(f"{strict.url}/v1/jobs", json=spec, headers=strict.headers())
    assert good.status_code == 202, good.text
    records = asyncio.run(audit_records(strict))
    failures = [r for r in records if r.action is AuditAction.AUTH_FAILURE]
    assert len(failures) == _BUDGET, failures
