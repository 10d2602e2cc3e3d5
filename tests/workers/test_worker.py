"""A real worker (bubblewrap sandbox, real nats-server) on the cases its shortcuts must get
right: a first delivery reads no history, unless the server lost count of deliveries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise

import pytest
from nats.js import JetStreamContext

from bus import (
    CancelRequest,
    FinishedEvent,
    JobMessage,
    JobResult,
    OutputEvent,
    StartedEvent,
    Verdict,
    publish_model,
    utc_now,
)
from bus import subjects as s
from sandbox import create_sandbox
from tests.stack import NatsServer
from tests.workers.bus_helpers import (
    connected,
    ensure_layout,
    new_job,
    stored_events,
)
from workers.settings import WorkerSettings
from workers.worker import Worker

_SETTLE_S = 30.0


@asynccontextmanager
async def running_worker(
    server: NatsServer, worker_id: str = "test-worker", concurrency: int = 2
) -> AsyncIterator[Worker]:
    settings = WorkerSettings(
        worker_id=worker_id, concurrency=concurrency, fetch_wait_s=0.2, shutdown_grace_s=5
    )
    service = Worker(settings, server.settings("worker"), create_sandbox("bwrap"))
    running = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(running, 30)


@pytest.fixture
async def worker(nats_server: NatsServer) -> AsyncIterator[Worker]:
    await ensure_layout(nats_server)
    async with running_worker(nats_server) as service:
        yield service


async def enqueue(server: NatsServer, *jobs: JobMessage) -> None:
    async with connected(server, "gateway") as nc:
        for job in jobs:
            await publish_model(nc.jetstream(), s.job_subject(job.tenant), job, msg_id=job.job_id)


async def queue_empty(js: JetStreamContext) -> bool:
    return (await js.stream_info(s.JOBS_STREAM)).state.messages == 0


async def settle(server: NatsServer, job: JobMessage, finished: int = 1) -> None:
    """Wait until `job` has `finished` results stored and the queue holds nothing."""
    async with connected(server, "gateway") as nc:
        js = nc.jetstream()
        deadline = asyncio.get_running_loop().time() + _SETTLE_S
        while asyncio.get_running_loop().time() < deadline:
            done = [e for e in await stored_events(server, job) if e.type == "finished"]
            if len(done) >= finished and await queue_empty(js):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{job.job_id} did not settle in {_SETTLE_S} s")


async def store_as_earlier_worker(
    server: NatsServer, job: JobMessage, *events: StartedEvent | FinishedEvent
) -> None:
    """Events an earlier delivery stored, before the server lost count of it."""
    async with connected(server, "worker") as nc:
        for event in events:
            await publish_model(
                nc.jetstream(),
                s.events_subject(job.run_id, job.job_id),
                event,
                msg_id=event.dedup_key,
                extra_headers={s.EVENT_TYPE_HEADER: event.type},
            )


def ids(job: JobMessage, attempt: int, seq: int) -> dict[str, object]:
    return {"job_id": job.job_id, "run_id": job.run_id, "attempt": attempt, "seq": seq}


async def test_first_deliveries_run_once_each(worker: Worker, nats_server: NatsServer) -> None:
    jobs = [new_job(f"print({i})") for i in range(6)]
    await enqueue(nats_server, *jobs)
    for index, job in enumerate(jobs):
        await settle(nats_server, job)
        stored = await stored_events(nats_server, job)
        assert {e.attempt for e in stored} == {1}
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        assert (stored[0].type, stored[-1].type) == ("started", "finished")
        output = [e for e in stored[1:-1] if isinstance(e, OutputEvent)]
        assert len(output) == len(stored) - 2
        assert "".join(e.data for e in output) == f"{index}\n"
        assert isinstance(stored[-1], FinishedEvent)
        assert stored[-1].result.verdict is Verdict.ACCEPTED


async def test_a_first_delivery_of_a_finished_job_only_acks_it(
    worker: Worker, nats_server: NatsServer
) -> None:
    job = new_job("print('ran again')")
    result = JobResult(verdict=Verdict.ACCEPTED, stdout="first\n", finished_at=utc_now())
    await store_as_earlier_worker(
        nats_server,
        job,
        StartedEvent(worker="gone", **ids(job, 1, 1)),  # type: ignore[arg-type]
        FinishedEvent(worker="gone", result=result, **ids(job, 1, 2)),  # type: ignore[arg-type]
    )
    await enqueue(nats_server, job)  # delivered as a first delivery
    await settle(nats_server, job)
    stored = await stored_events(nats_server, job)
    assert [(e.attempt, e.type) for e in stored] == [(1, "started"), (1, "finished")]


async def test_a_first_delivery_after_a_started_attempt_runs_as_the_next_attempt(
    worker: Worker, nats_server: NatsServer
) -> None:
    job = new_job("print('second')")
    await store_as_earlier_worker(
        nats_server,
        job,
        StartedEvent(worker="gone", **ids(job, 1, 1)),  # type: ignore[arg-type]
    )
    await enqueue(nats_server, job)
    await settle(nats_server, job)
    stored = await stored_events(nats_server, job)
    assert [(e.attempt, e.seq, e.type) for e in stored[:2]] == [
        (1, 1, "started"),
        (2, 1, "started"),
    ]
    assert {e.attempt for e in stored[1:]} == {2}
    assert "".join(e.data for e in stored if isinstance(e, OutputEvent)) == "second\n"
    assert isinstance(stored[-1], FinishedEvent)
    assert stored[-1].result.verdict is Verdict.ACCEPTED


async def test_a_job_cancelled_while_queued_never_starts(
    worker: Worker, nats_server: NatsServer
) -> None:
    job = new_job("print('must not run')")
    async with connected(nats_server, "gateway") as nc:
        kv = await nc.jetstream().key_value(s.CANCELS_BUCKET)
        await kv.put(job.job_id, CancelRequest(job_id=job.job_id).model_dump_json().encode())
    await enqueue(nats_server, job)
    await settle(nats_server, job)
    stored = await stored_events(nats_server, job)
    assert [e.type for e in stored] == ["finished"]
    assert isinstance(stored[0], FinishedEvent)
    assert stored[0].result.reason == "cancelled before it started"


async def finished_event(server: NatsServer, job: JobMessage) -> FinishedEvent:
    """`job`'s result once stored (other jobs may still be queued or running)."""
    deadline = asyncio.get_running_loop().time() + _SETTLE_S
    while asyncio.get_running_loop().time() < deadline:
        for event in await stored_events(server, job):
            if isinstance(event, FinishedEvent):
                return event
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job.job_id} did not finish in {_SETTLE_S} s")


async def test_a_job_fetched_behind_a_long_one_goes_to_a_free_worker(
    nats_server: NatsServer,
) -> None:
    """One slot, two jobs queued: the second is fetched while the first runs, and handed back
    when the first runs on, so that a worker that comes free meanwhile runs it at once."""
    await ensure_layout(nats_server)
    long_job = new_job("import time\ntime.sleep(4)\nprint('long')")
    short_job = new_job("print('short')")
    async with running_worker(nats_server, "busy-worker", concurrency=1):
        await enqueue(nats_server, long_job, short_job)
        await asyncio.sleep(1)  # the short job is fetched ahead, then handed back
        async with running_worker(nats_server, "free-worker", concurrency=1):
            short = await finished_event(nats_server, short_job)
            assert not [
                e for e in await stored_events(nats_server, long_job) if e.type == "finished"
            ]
            long = await finished_event(nats_server, long_job)
    assert (short.worker, short.attempt, short.result.stdout) == ("free-worker", 1, "short\n")
    assert (long.worker, long.result.stdout) == ("busy-worker", "long\n")


async def test_jobs_fetched_ahead_run_one_at_a_time_per_slot(nats_server: NatsServer) -> None:
    """A queue of jobs on one slot: each fetched while the one before runs, none overlapping."""
    await ensure_layout(nats_server)
    jobs = [new_job("import time\nprint(time.time())\ntime.sleep(0.05)") for _ in range(8)]
    async with running_worker(nats_server, "one-slot", concurrency=1):
        await enqueue(nats_server, *jobs)
        results = [(await finished_event(nats_server, job)).result for job in jobs]
    spans = sorted((r.started_at, r.finished_at) for r in results if r.started_at)
    assert len(spans) == len(jobs)
    assert all(r.verdict is Verdict.ACCEPTED for r in results)
    assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans))


async def test_a_job_is_logged_as_it_starts_and_ends(
    worker: Worker, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A line costs the worker about what a store does: two per job, no more; the first so
    that a worker that dies mid-job leaves the job's id in its log."""
    caplog.set_level(logging.INFO, logger="workers.worker")
    job = new_job("print('logged')")
    await enqueue(nats_server, job)
    await settle(nats_server, job)
    await asyncio.sleep(0.1)  # the line follows the ack
    lines = [
        r
        for r in caplog.records
        if r.name == "workers.worker"
        and r.levelno >= logging.INFO
        and r.getMessage() != "worker ready"
    ]
    seen = [(r.getMessage(), r.attempt, getattr(r, "verdict", None)) for r in lines]  # type: ignore[attr-defined]
    assert seen == [("job started", 1, None), ("job finished", 1, "accepted")]


async def test_a_worker_that_cannot_store_events_hands_jobs_back_and_waits(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """EVENTS not taking events (as while a cluster elects its leader) and JOBS still there:
    the worker does not run job after job whose results it cannot store. It hands each back
    (a nak, not the ack wait) and fetches again after a pause that doubles per failure; once
    the stream is back, every job runs to exactly one result."""
    await ensure_layout(nats_server)
    async with connected(nats_server, "gateway") as nc:
        js = nc.jetstream()
        config = (await js.stream_info(s.EVENTS_STREAM)).config
        config.subjects = ["crucible.outage.>"]  # no stream takes events: stores get a 503
        await js.update_stream(config)
    caplog.set_level(logging.INFO, logger="workers.worker")
    jobs = [new_job(f"print({number})") for number in range(30)]
    async with running_worker(nats_server):
        await enqueue(nats_server, *jobs)
        await asyncio.sleep(2.0)  # the outage
        runs = [r for r in caplog.records if r.getMessage() == "job started"]
        handed_back = [r for r in caplog.records if "handed back, next fetch in" in r.getMessage()]
        await ensure_layout(nats_server)
        for job in jobs:
            await settle(nats_server, job)
    # Without the pause, all 30 ran (10 ms each) and failed in the outage's first second.
    assert 1 <= len(runs) <= 10, len(runs)
    assert len(handed_back) >= len(runs)
    for job in jobs:
        events = await stored_events(nats_server, job)
        assert [e.type for e in events if e.type == "finished"] == ["finished"], job.job_id
