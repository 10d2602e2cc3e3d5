"""Pulling jobs one at a time on a real nats-server: a job or nothing within the wait, a job
that came for a pull no one waited for, and a queue that is not there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bus import BusUnavailableError, Connection
from bus import subjects as s
from bus.pull import Puller
from tests.stack import NatsServer
from tests.workers.bus_helpers import connected, ensure_layout


@pytest.fixture
async def worker(nats_server: NatsServer) -> AsyncIterator[Connection]:
    await ensure_layout(nats_server)
    async with connected(nats_server, "worker") as nc:
        yield nc


async def enqueue(server: NatsServer, *payloads: bytes) -> None:
    async with connected(server, "gateway") as nc:
        for payload in payloads:
            await nc.jetstream().publish(s.job_subject("t"), payload)


async def queued(server: NatsServer) -> int:
    async with connected(server, "gateway") as nc:
        return (await nc.jetstream().stream_info(s.JOBS_STREAM)).state.messages


async def test_a_pull_gets_a_queued_job_or_nothing_within_its_wait(
    worker: Connection, nats_server: NatsServer
) -> None:
    puller = Puller(worker, s.JOBS_STREAM, s.WORKERS_CONSUMER)
    await puller.start()
    assert await puller.next(0.05) is None
    await enqueue(nats_server, b"one", b"two")
    first = await puller.next(1.0)
    assert first is not None and first.data == b"one"
    assert (first.metadata.num_delivered, first.metadata.num_pending) == (1, 1)
    await first.ack()
    second = await puller.next(1.0)
    assert second is not None and second.data == b"two"
    await second.ack()
    await worker.flush()
    assert await queued(nats_server) == 0  # the acks reached the work queue
    await puller.close()


async def test_a_job_that_came_when_no_pull_waited_goes_to_the_next_pull(
    worker: Connection, nats_server: NatsServer
) -> None:
    puller = Puller(worker, s.JOBS_STREAM, s.WORKERS_CONSUMER)
    await puller.start()
    # A pull the puller does not know of (one it gave up on as a connection dropped): the
    # job it gets arrives on the puller's subscription with no one waiting for it.
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{s.JOBS_STREAM}.{s.WORKERS_CONSUMER}"
    await worker.publish(next_subject, b'{"batch":1}', reply=f"{puller._prefix}.999")
    await enqueue(nats_server, b"orphan")
    await asyncio.sleep(0.2)
    kept = await puller.next(0.01)  # no pull needed: the job is there
    assert kept is not None and kept.data == b"orphan"
    await kept.ack()
    await puller.close()


async def test_a_pull_on_a_queue_that_is_not_there_fails(nats_server: NatsServer) -> None:
    async with connected(nats_server, "worker") as nc:  # no streams, no consumer yet
        puller = Puller(nc, s.JOBS_STREAM, s.WORKERS_CONSUMER)
        await puller.start()
        with pytest.raises(BusUnavailableError, match="503"):
            await puller.next(1.0)
        await puller.close()


async def test_a_job_kept_for_the_next_pull_goes_back_to_the_queue_on_close(
    worker: Connection, nats_server: NatsServer
) -> None:
    puller = Puller(worker, s.JOBS_STREAM, s.WORKERS_CONSUMER)
    await puller.start()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{s.JOBS_STREAM}.{s.WORKERS_CONSUMER}"
    await worker.publish(next_subject, b'{"batch":1}', reply=f"{puller._prefix}.999")
    await enqueue(nats_server, b"kept")
    await asyncio.sleep(0.2)
    await puller.close()  # the job was kept, never handed out: it goes back
    again = Puller(worker, s.JOBS_STREAM, s.WORKERS_CONSUMER)
    await again.start()
    job = await again.next(1.0)  # well within the 30 s ack wait
    assert job is not None and job.data == b"kept" and job.metadata.num_delivered == 2
    await job.ack()
    await again.close()
