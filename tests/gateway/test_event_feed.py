"""The gateway's event feed (real nats-server): every job's live tail reads its new events
through one JetStream consumer, what was stored before comes from direct gets, and the seam
between the two loses nothing and repeats nothing, however busy the feed is when a tail
starts. The feed stops when nobody watches, and starts again for the next watcher.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from nats.js import JetStreamContext

from bus import subjects as s
from gateway import stored_events
from gateway.bus_client import GatewayBus
from gateway.event_feed import PendingWatch
from tests.gateway.job_events import (
    SETTLE_S,
    Job,
    Seen,
    consumers,
    follow,
    new_record,
    settle,
    until,
)


async def test_the_tails_of_many_jobs_read_through_one_consumer(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext
) -> None:
    jobs = [Job(worker, new_record()) for _ in range(10)]
    received = [[[] for _ in range(3)] for _ in jobs]  # three clients per job
    clients = [
        asyncio.create_task(follow(bus, job.record, got=got))
        for job, gots in zip(jobs, received, strict=True)
        for got in gots
    ]
    for job in jobs:
        await job.start()
    for line in range(5):
        for job in jobs:
            await job.print(f"{line}\n")
    await until(
        lambda: all(
            len(got) == len(job.seen)
            for job, gots in zip(jobs, received, strict=True)
            for got in gots
        )
    )
    # Ten jobs followed at once, ten tails, and one consumer: the feed's.
    assert (len(bus.tails), await consumers(debug)) == (10, 1)
    for job in jobs:
        await job.finish()
    await asyncio.gather(*clients)
    for job, gots in zip(jobs, received, strict=True):
        for got in gots:
            assert got == job.seen
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails), bus.feed.reading) == (0, 0, False)


async def test_tails_starting_while_events_pour_in_get_every_event_once(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext
) -> None:
    # Forty jobs print at once; each gets its first client (so a new tail) after a random
    # number of its events, some resuming after a random id: the seam between what the tail
    # reads from the stream and what the busy feed hands it falls anywhere.
    rng = random.Random(20)
    jobs = [Job(worker, new_record()) for _ in range(40)]
    followers: list[tuple[Job, int | None, asyncio.Task[list[Seen]]]] = []

    async def run(job: Job, join_after: int) -> None:
        await job.start()
        for line in range(30):
            if line == join_after:
                last_event_id = rng.choice([None, *(seq for seq, _, _ in job.seen)])
                task = asyncio.create_task(follow(bus, job.record, last_event_id))
                followers.append((job, last_event_id, task))
            await job.print(f"{line}\n")
            await asyncio.sleep(0)
        await job.finish()

    await asyncio.gather(*(run(job, rng.randrange(30)) for job in jobs))
    assert len(followers) == len(jobs)
    for job, last_event_id, task in followers:
        assert await task == job.after(last_event_id), f"joined after {last_event_id}"
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails)) == (0, 0)


async def test_stored_events_are_read_in_as_many_batches_as_it_takes(
    bus: GatewayBus, worker: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stored_events, "BATCH_MESSAGES", 4)
    job = Job(worker, new_record())
    await job.start()
    for line in range(25):
        await job.print(f"{line}\n")
    await job.finish()
    # The whole job comes from the stream, four events a request; and from the middle on.
    # (A reader stopping at the first batch would wait for the rest forever: bounded.)
    async with asyncio.timeout(SETTLE_S):
        assert await follow(bus, job.record) == job.seen
        middle = job.seen[10][0]
        assert await follow(bus, job.record, last_event_id=middle) == job.after(middle)


async def test_the_feed_stops_when_nobody_watches_and_starts_for_the_next_client(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext
) -> None:
    first = Job(worker, new_record())
    client = asyncio.create_task(follow(bus, first.record))
    await first.start()
    await until(lambda: bus.feed.reading)
    await first.finish()
    assert await client == first.seen
    await settle(debug, bus)
    assert (await consumers(debug), bus.feed.reading) == (0, False)
    # Events stored while nobody watched, then more once a client is back.
    second = Job(worker, new_record())
    await second.start()
    await second.print("before\n")
    client = asyncio.create_task(follow(bus, second.record))
    await until(lambda: bus.feed.reading)
    await second.print("after\n")
    await second.finish()
    assert await client == second.seen


async def test_a_reset_of_the_feeds_consumer_does_not_reread_the_stream(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext
) -> None:
    # Events from before the feed started: a consumer re-made from the stream's first
    # position (nats-py's default when no message has come yet) would read them all again.
    old = Job(worker, new_record())
    await old.start()
    for line in range(20):
        await old.print(f"{line}\n")
    await old.finish()
    stored = (await debug.stream_info(s.EVENTS_STREAM)).state.last_seq
    job = Job(worker, new_record())
    client = asyncio.create_task(follow(bus, job.record))
    await until(lambda: bus.feed.reading and len(bus.tails) == 1)
    # What nats-py does when the consumer's heartbeats stop coming (NATS was away): a new
    # consumer from the position after the last message it delivered.
    (feed,) = [sub for sub in bus.nc._subs.values() if sub._jsi is not None]
    assert feed._jsi is not None
    await feed._jsi.reset_ordered_consumer(feed._jsi._sseq + 1)
    await job.start()
    await job.finish()
    assert await client == job.seen
    starts = [info.config.opt_start_seq for info in await debug.consumers_info(s.EVENTS_STREAM)]
    assert starts and all(start is not None and start > stored for start in starts), starts


async def test_a_submissions_stream_watched_before_its_job_existed_reads_nothing_back(
    bus: GatewayBus,
    worker: JetStreamContext,
    debug: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = Job(worker, new_record())
    subject = s.events_subject(job.record.run_id, job.record.job_id)
    watched = PendingWatch(bus.feed, await bus.feed.open(subject))

    def read_back(*args: object, **kwargs: object) -> None:
        raise AssertionError("a submission's stream read the job's events back from JetStream")

    monkeypatch.setattr(bus.stored, "read", read_back)
    # Events before the stream is read at all wait in the watch; the rest come live.
    await job.start()
    await job.print("before\n")
    client = asyncio.create_task(follow(bus, job.record, watched=watched))
    await until(lambda: len(bus.tails) == 1)
    await job.print("after\n")
    await job.finish()
    assert await client == job.seen
    await settle(debug, bus)  # the watch released with the stream: the feed stops
    assert (await consumers(debug), bus.feed.reading) == (0, False)


async def test_others_following_a_submissions_job_keep_its_events_when_it_leaves(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext
) -> None:
    # The submission's client made the job's tail (with its watch); a client of events_url
    # joined that tail; the submission's client leaves mid-job: the tail, and its watch, are
    # the other client's now.
    job = Job(worker, new_record())
    subject = s.events_subject(job.record.run_id, job.record.job_id)
    watched = PendingWatch(bus.feed, await bus.feed.open(subject))
    submitter_got: list[Seen] = []
    submitter = asyncio.create_task(follow(bus, job.record, got=submitter_got, watched=watched))
    await until(lambda: len(bus.tails) == 1)
    other = asyncio.create_task(follow(bus, job.record))
    await job.start()
    await job.print("both\n")
    await until(lambda: len(submitter_got) == len(job.seen))
    submitter.cancel()
    await asyncio.gather(submitter, return_exceptions=True)
    await job.print("only the other\n")
    await job.finish()
    async with asyncio.timeout(SETTLE_S):
        assert await other == job.seen
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails), bus.feed.reading) == (0, 0, False)
