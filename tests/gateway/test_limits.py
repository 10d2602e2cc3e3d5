"""Rate limits per key and a cap on each tenant's unfinished jobs: 429 with Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from bus import JobMessage, JobSpec, QueueFullError, connect, publish_model, utc_now
from bus import subjects as s
from bus.audit import AuditAction
from crucible.client import AsyncClient, Client
from tests.bus_state import audit_records, last_writes
from tests.stack import Stack, running_stack
from tests.tenants import tenant_key

SLEEPER = {
    "language": "python",
    "code": "import time; time.sleep(60)",
    "limits": {"wall_time_s": 60},
}
_CAP = 2


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack that lets each key 3 requests at once, then one a second."""
    env = {"CRUCIBLE_RATE_LIMIT__BURST": "3", "CRUCIBLE_RATE_LIMIT__REQUESTS_PER_S": "1"}
    with running_stack(tmp_path_factory.mktemp("rate"), workers=1, env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def capped_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker, one job at a time; at most two unfinished jobs per tenant, three in all."""
    env = {
        "CRUCIBLE_STREAMS__MAX_QUEUED_PER_TENANT": str(_CAP),
        "CRUCIBLE_STREAMS__MAX_QUEUED_TOTAL": str(_CAP + 1),
    }
    with running_stack(tmp_path_factory.mktemp("cap"), workers=1, env=env) as stack:
        yield stack


async def test_a_key_over_its_rate_gets_429_and_others_do_not(slow_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=slow_stack.url, headers=slow_stack.headers()) as client:
        for _ in range(3):
            assert (await client.get("/v1/runtimes")).status_code == 200
        before = await last_writes(slow_stack)
        refused = await client.post("/v1/jobs", json={"language": "python", "code": "print(1)"})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "rate limit of key local exceeded" in refused.json()["detail"]
        assert await last_writes(slow_stack) == before
        # Buckets are per key: another key (even of the same tenant) is not slowed down.
        with tenant_key(slow_stack, "local", "second") as second:
            assert (await client.get("/v1/runtimes", headers=second)).status_code == 200
    refusal = [r for r in await audit_records(slow_stack) if r.status == 429][-1]
    assert refusal.action is AuditAction.RATE_LIMITED
    assert (refusal.tenant, refusal.key_id, refusal.path) == ("local", "local", "/v1/jobs")


def wait_finished(stack: Stack, url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(url, headers=stack.headers()).json()["status"] == "finished":
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not finish")


async def fill_queue(stack: Stack) -> list[dict[str, str]]:
    """Wait until the tenant has no unfinished job (an earlier test's), then queue the cap."""
    nc = await connect(stack.nats(), "debug", "test-cap")
    subject = s.job_subject("local")
    try:
        for _ in range(300):
            info = await nc.jetstream().stream_info(s.JOBS_STREAM, subjects_filter=subject)
            if not (info.state.subjects or {}).get(subject):
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers()) as client:
        responses = [await client.post("/v1/jobs", json=SLEEPER) for _ in range(_CAP)]
    assert [r.status_code for r in responses] == [202] * _CAP
    return [r.json() for r in responses]


async def test_a_tenant_over_its_queue_cap_gets_429(capped_stack: Stack) -> None:
    stack = capped_stack
    jobs = await fill_queue(stack)
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers()) as client:
        before = await last_writes(stack)
        one_more = await client.post("/v1/jobs", json=SLEEPER)
        assert one_more.status_code == 429, one_more.text
        assert one_more.headers["retry-after"].isdigit()
        assert f"tenant local has {_CAP} unfinished jobs" in one_more.json()["detail"]
        run = await client.post("/v1/runs", json={"jobs": [SLEEPER]})
        assert run.status_code == 429 and "would pass the cap of 2" in run.json()["detail"]
        assert await last_writes(stack) == before  # neither left a record nor a job behind
        # Another tenant has a queue of its own, but all share the overall cap.
        with tenant_key(stack, "other", "other-1") as other:
            theirs = await client.post("/v1/jobs", json=SLEEPER, headers=other)
            assert theirs.status_code == 202, theirs.text
            overall = await client.post("/v1/jobs", json=SLEEPER, headers=other)
            assert overall.status_code == 429, overall.text
            assert "maximum messages exceeded" in overall.json()["detail"]
            await client.post(f"/v1/jobs/{theirs.json()['id']}/cancel", headers=other)
        for job in jobs:
            assert (await client.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 202
        for job in jobs:
            wait_finished(stack, job["url"])
        # Finished jobs leave the queue: there is room again.
        again = await client.post("/v1/jobs", json={"language": "python", "code": "print(1)"})
        assert again.status_code == 202, again.text


async def test_nats_itself_enforces_the_cap(capped_stack: Stack) -> None:
    """Even a client that skips the gateway's check cannot queue past the cap."""
    jobs = await fill_queue(capped_stack)
    nc = await connect(capped_stack.nats("gateway"), "gateway", "test-cap")
    message = JobMessage(
        job_id="j-" + "f" * 32,
        run_id="r-" + "f" * 32,
        tenant="local",
        spec=JobSpec.model_validate(SLEEPER),
        submitted_at=utc_now(),
    )
    try:
        with pytest.raises(QueueFullError):
            await publish_model(nc.jetstream(), s.job_subject("local"), message)
    finally:
        await nc.close()
        async with httpx.AsyncClient(headers=capped_stack.headers()) as client:
            for job in jobs:
                await client.post(f"{job['url']}/cancel")


def test_the_client_waits_out_a_rate_limit(slow_stack: Stack) -> None:
    with tenant_key(slow_stack, "local", "client") as headers:
        key = headers["Authorization"].removeprefix("Bearer ")
        with Client(slow_stack.url, key) as client:
            # Twice the burst: the later calls are refused at first, then retried and served.
            listings = [client.runs(limit=1) for _ in range(6)]
    assert len(listings) == 6
    refused = [r for r in asyncio.run(audit_records(slow_stack)) if r.key_id == "client"]
    assert refused and all(r.action is AuditAction.RATE_LIMITED for r in refused)


async def test_a_run_refused_for_its_rate_is_sent_again_whole_by_the_clients(
    slow_stack: Stack,
) -> None:
    # The client sends each batch through a body it lets go of once sent: after a 429 it
    # must send the batch again, whole, through the sync and the async client alike. A key
    # of its own: its bucket, spent here, is no other test's.
    specs = [JobSpec(language="python", code=f"print({i})  # {'x' * 80}") for i in range(5)]

    async def spend_the_burst(http: httpx.AsyncClient) -> None:
        while (await http.get("/v1/runtimes")).status_code != 429:
            pass

    with tenant_key(slow_stack, "local", "retried") as headers:
        key = headers["Authorization"].removeprefix("Bearer ")
        async with httpx.AsyncClient(base_url=slow_stack.url, headers=headers) as http:
            await spend_the_burst(http)
            with Client(slow_stack.url, key) as crucible:
                crucible.config.max_batch_bytes = 300  # 2 jobs a batch: a run and two appends
                sync_run = await asyncio.to_thread(crucible.submit_run, specs)
            await spend_the_burst(http)
            async with AsyncClient(slow_stack.url, key) as async_crucible:
                async_crucible.config.max_batch_bytes = 300
                async_run = await async_crucible.submit_run(specs)
    records = await audit_records(slow_stack)
    for run in (sync_run, async_run):
        assert len(run.job_ids) == run.total_jobs == 5
        appends = [r for r in records if r.path == f"/v1/runs/{run.id}/jobs"]
        assert any(r.status == 429 for r in appends)  # refused at its rate, then sent again
        accepted = [r for r in records if r.run_id == run.id and r.status == 202]
        assert len(accepted) == 3 and sum(r.jobs or 0 for r in accepted) == 5
