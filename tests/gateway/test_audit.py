"""Every refusal leaves nothing on the bus, and every submission, cancel and refusal is audited."""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import PIPE

import httpx
import pytest

from bus.audit import AuditAction, AuditOutcome
from tests.bus_state import audit_records, last_writes
from tests.stack import Stack

OK_SPEC = {"language": "python", "code": "print(1)"}
REFUSALS = [
    # (what, method, path, body or raw bytes, authorised?, status, words in the detail)
    ("no key", "POST", "/v1/jobs", OK_SPEC, False, 401, "missing API key"),
    ("body too large", "POST", "/v1/jobs", b"x" * (5 * 1024 * 1024), True, 413, "request body"),
    ("code too large", "POST", "/v1/jobs", {**OK_SPEC, "code": "#" * (1024 * 1024 + 1)}, True,
     413, "code is"),
    ("unknown field", "POST", "/v1/jobs", {**OK_SPEC, "priority": 9}, True, 422, "priority"),
    ("file outside the work dir", "POST", "/v1/jobs", {**OK_SPEC, "files": {"../x.py": ""}},
     True, 422, "x.py"),
    ("absolute file name", "POST", "/v1/jobs", {**OK_SPEC, "files": {"/etc/cron.d/x": ""}},
     True, 422, "cron"),
    ("limit above the ceiling", "POST", "/v1/jobs",
     {**OK_SPEC, "limits": {"memory_mb": 1_000_000}}, True, 422, "memory_mb"),
    ("unknown language", "POST", "/v1/jobs", {**OK_SPEC, "language": "cobol"}, True, 422,
     "cobol"),
    ("run with a bad job", "POST", "/v1/runs", {"jobs": [OK_SPEC, {"language": "x"}]}, True,
     422, "jobs"),
    ("run with no jobs", "POST", "/v1/runs", {"jobs": []}, True, 422, "jobs"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "method", "path", "body", "authorised", "status", "fragment"),
    REFUSALS,
    ids=[refusal[0] for refusal in REFUSALS],
)
async def test_each_refusal_stores_nothing_and_is_audited(
    stack: Stack,
    what: str,
    method: str,
    path: str,
    body: object,
    authorised: bool,
    status: int,
    fragment: str,
) -> None:
    before = await last_writes(stack)
    headers = {"X-Test": what, **(stack.headers() if authorised else {})}
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        if isinstance(body, bytes):
            response = await client.request(method, path, content=body, headers=headers)
        else:
            response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert fragment in response.text
    assert await last_writes(stack) == before  # nothing stored, not even half a job
    records = [r for r in await audit_records(stack) if r.status == status and r.path == path]
    record = records[-1]
    assert record.outcome is AuditOutcome.REFUSED
    assert record.client == "127.0.0.1"
    assert record.detail is not None and fragment in record.detail
    if authorised:
        assert (record.tenant, record.key_id) == ("local", "local")
    else:
        assert record.action is AuditAction.AUTH_FAILURE and record.tenant is None


async def test_accepted_work_is_audited_with_its_ids_and_trace(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers()) as client:
        job = (await client.post("/v1/jobs", json=OK_SPEC)).json()
        run = (await client.post("/v1/runs", json={"jobs": [OK_SPEC, OK_SPEC]})).json()
        assert (await client.post(f"/v1/runs/{run['id']}/cancel")).status_code == 202
        trace_id = (await client.get(f"/v1/jobs/{job['id']}")).json()["trace_id"]
    records = await audit_records(stack)
    submitted = next(r for r in records if r.job_id == job["id"])
    assert submitted.action is AuditAction.SUBMIT_JOB
    assert submitted.outcome is AuditOutcome.ACCEPTED and submitted.status == 202
    assert (submitted.tenant, submitted.key_id, submitted.run_id) == (
        "local",
        "local",
        job["run_id"],
    )
    assert submitted.trace_id == trace_id and trace_id is not None
    by_run = [(r.action, r.jobs) for r in records if r.run_id == run["id"]]
    assert by_run == [(AuditAction.SUBMIT_RUN, 2), (AuditAction.CANCEL_RUN, None)]


async def test_crucible_audit_tail_prints_records(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        await client.get("/v1/runtimes", headers={"Authorization": "Bearer not-a-key"})
    nats = stack.nats()
    assert nats.creds_file is not None
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crucible", "audit", "tail", "--last", "1",
        env={
            **os.environ,
            "CRUCIBLE_NATS_URL": nats.url,
            "CRUCIBLE_NATS_CREDS_FILE": str(nats.creds_file),
        },
        stdout=PIPE,
    )  # fmt: skip
    stdout, _ = await cli.communicate()
    assert cli.returncode == 0
    line = stdout.decode().strip()
    assert "refused" in line and "401" in line and "auth_failure" in line
    assert "GET /v1/runtimes" in line and "tenant=-" in line and "invalid API key" in line
