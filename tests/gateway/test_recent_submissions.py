"""The watches a gateway makes of the jobs it has just posted (real nats-server): made only
while the event feed reads, handed to the job's first stream, let go of when nobody comes
for them, and few however many jobs are posted."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from bus import subjects as s
from gateway import recent_submissions
from gateway.bus_client import GatewayBus
from tests.gateway.job_events import Job, consumers, follow, new_record, settle, until


async def test_a_watch_nobody_takes_is_let_go_of(
    bus: GatewayBus,
    worker: JetStreamContext,
    debug: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recent_submissions, "HELD_S", 0.1)
    record = new_record()
    bus.recent.watch(record)
    assert len(bus.recent) == 0  # the feed was not reading: no watch (and no feed started)
    async with bus.feed.watch(s.events_subject("r-other", "j-other")):
        bus.recent.watch(record)
    assert len(bus.recent) == 1  # and it keeps the feed reading
    await until(lambda: len(bus.recent) == 0)
    await settle(debug, bus)
    assert (await consumers(debug), bus.feed.reading) == (0, False)
    # A stream that comes late reads the job as any stream does.
    job = Job(worker, record)
    await job.start()
    await job.finish()
    assert await follow(bus, record) == job.seen


async def test_the_first_stream_takes_the_watch_and_gets_every_event(
    bus: GatewayBus, worker: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Job(worker, new_record())
    async with bus.feed.watch(s.events_subject("r-other", "j-other")):
        bus.recent.watch(job.record)
        await job.start()  # before any stream: held by the watch
        watched = bus.recent.take(job.record.job_id)
        assert watched is not None and bus.recent.take(job.record.job_id) is None

        def read_back(*args: object, **kwargs: object) -> None:
            raise AssertionError("read back from JetStream")

        monkeypatch.setattr(bus.stored, "read", read_back)
        client = asyncio.create_task(follow(bus, job.record, watched=watched))
        await job.print("x\n")
        await job.finish()
        assert await client == job.seen


async def test_a_burst_of_posted_jobs_holds_few_watches(
    bus: GatewayBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recent_submissions, "MAX_HELD", 3)
    async with bus.feed.watch(s.events_subject("r-other", "j-other")):
        for _ in range(10):
            bus.recent.watch(new_record())
        assert len(bus.recent) == 3
