"""The shared live tail of a job's (or a run's) events (real nats-server): however many
clients follow it, and wherever they join, each gets every event after its `Last-Event-ID`
exactly once and in order; a job's tail reads through the gateway's event feed (one
JetStream consumer for every job), a run's through a consumer of its own, and neither is
left reading once the last client has gone.

A worker identity publishes the events, the gateway's own code reads them; the ring is made
small so that replays, seams and slow clients falling behind happen within a few events.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js import JetStreamContext

from bus import JobRecord, RunChunk, RunMember, RunRecord, new_run_id, utc_now
from bus import subjects as s
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.run_sse import run_event_stream
from gateway.schemas import JobView
from gateway.views import JobLinks, job_view
from tests.gateway.job_events import (
    Connection,
    Job,
    Seen,
    consumers,
    follow,
    new_record,
    parse,
    settle,
    tails_reading,
    until,
)


async def test_many_clients_share_one_consumer_and_each_gets_every_event_once(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext
) -> None:
    job = Job(worker, new_record())
    received: list[list[Seen]] = [[] for _ in range(50)]
    clients = [asyncio.create_task(follow(bus, job.record, got=got)) for got in received]
    await job.start()
    for line in range(20):
        await job.print(f"{line}\n")
    await until(lambda: all(len(got) == len(job.seen) for got in received))
    # Fifty clients, one consumer: the event feed, which the job's tail reads.
    assert await consumers(debug) == 1
    assert tails_reading() == 1
    for line in range(20, 100):
        await job.print(f"{line}\n")
    await job.finish()
    for events in await asyncio.gather(*clients):
        assert events == job.seen
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails), tails_reading()) == (0, 0, 0)


async def test_clients_joining_mid_job_get_exactly_the_events_after_their_id(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext, small_ring: None
) -> None:
    # The job prints all along while clients join with ids picked at random among those
    # stored so far: some within the tail's ring, some before it (a replay, then the seam),
    # some started the tail themselves part way through.
    job = Job(worker, new_record())
    rng = random.Random(10)
    await job.start()
    joiners: list[tuple[int | None, asyncio.Task[list[Seen]]]] = []
    for line in range(300):
        await job.print(f"line {line}\n")
        if rng.random() < 0.15:
            last_event_id = rng.choice([None] + [seq for seq, _, _ in job.seen])
            task = asyncio.create_task(follow(bus, job.record, last_event_id))
            joiners.append((last_event_id, task))
        if line % 7 == 0:
            await asyncio.sleep(0.005)  # let clients run: some keep up, some fall behind
    await job.finish()
    assert len(joiners) > 20
    for last_event_id, task in joiners:
        assert await task == job.after(last_event_id), f"joined after {last_event_id}"
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails)) == (0, 0)


async def test_a_stalled_client_holds_up_nobody_and_still_gets_every_event(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext, small_ring: None
) -> None:
    job = Job(worker, new_record())
    fast_done = asyncio.Event()

    async def stall_after_the_first_events(events: list[Seen]) -> None:
        if len(events) >= 3:
            await fast_done.wait()  # reads nothing more until every fast client has finished

    slow = asyncio.create_task(follow(bus, job.record, between=stall_after_the_first_events))
    fast = [asyncio.create_task(follow(bus, job.record)) for _ in range(5)]
    await job.start()
    for line in range(200):  # far more than the ring holds
        await job.print(f"{line}\n")
        if line % 10 == 0:
            await asyncio.sleep(0.001)
    await job.finish()
    for events in await asyncio.gather(*fast):
        assert events == job.seen
    assert not slow.done()  # the fast ones finished while it was stalled
    fast_done.set()
    assert await slow == job.seen  # it fell behind the ring, replayed, and lost nothing
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails)) == (0, 0)


async def test_the_tail_is_torn_down_when_its_last_client_leaves_mid_job(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext
) -> None:
    job = Job(worker, new_record())
    received: list[list[Seen]] = [[] for _ in range(10)]
    clients = [asyncio.create_task(follow(bus, job.record, got=got)) for got in received]
    await job.start()
    await job.print("hello\n")
    await until(lambda: all(len(got) == len(job.seen) for got in received))
    assert (await consumers(debug), len(bus.tails), tails_reading()) == (1, 1, 1)
    for client in clients[:5]:
        client.cancel()
    await asyncio.sleep(0.1)
    assert (await consumers(debug), len(bus.tails)) == (1, 1)  # others still follow it
    for client in clients[5:]:
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    await settle(debug, bus)
    # The job goes on, nobody follows it: no tail, no consumer.
    assert (await consumers(debug), len(bus.tails), tails_reading()) == (0, 0, 0)
    # A client that comes back later gets a new tail, and everything after its id.
    await job.print("again\n")
    await job.finish()
    assert await follow(bus, job.record, last_event_id=job.seen[1][0]) == job.after(job.seen[1][0])


async def test_clients_the_tail_pushes_to_get_every_event_once_whatever_their_buffers_do(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext, small_ring: None
) -> None:
    # Pushed clients whose buffers are never full, clients whose buffers fill at random
    # (each time, the client goes back to its task, then to the tail again), one that stalls
    # long enough to fall behind the ring (a replay), and joiners at random ids: each gets
    # every event after its id once, in order, whichever way each one came.
    job = Job(worker, new_record())
    joins = random.Random(11)
    buffers = random.Random(12)  # called as often as the timing makes it: its own

    def full_at_random() -> bool:
        return buffers.random() < 0.3

    def client(
        last_event_id: int | None, full: Callable[[], bool], between: Any = None
    ) -> tuple[Connection, asyncio.Task[list[Seen]]]:
        got: list[Seen] = []
        connection = Connection(got, full)
        task = asyncio.create_task(follow(bus, job.record, last_event_id, got, between, connection))
        return connection, task

    # It takes pushes up to line 10, then its buffer is full: back in its task, it stalls
    # until the ring has moved past it, and replays from the last event pushed to it.
    stalled_done = asyncio.Event()
    stalling = [False]

    async def stall(events: list[Seen]) -> None:
        if stalling[0]:
            await stalled_done.wait()

    never_full = [client(None, lambda: False) for _ in range(5)]
    filling = [(None, *client(None, full_at_random)) for _ in range(5)]
    stalled = client(None, lambda: stalling[0], stall)
    await job.start()
    for line in range(200):
        await job.print(f"line {line}\n")
        stalling[0] = line >= 10
        if joins.random() < 0.1:
            last_event_id = joins.choice([None] + [seq for seq, _, _ in job.seen])
            filling.append((last_event_id, *client(last_event_id, full_at_random)))
        if line % 5 == 0:
            await asyncio.sleep(0.005)
    await job.finish()
    for connection, task in never_full:
        assert await task == job.seen
        assert connection.pushed_events > len(job.seen) / 2  # most came without its task
    assert len(filling) > 15
    for last_event_id, _, task in filling:
        assert await task == job.after(last_event_id), f"joined after {last_event_id}"
    assert not stalled[1].done()
    assert stalled[0].pushed_events > 5
    stalled_done.set()
    assert await stalled[1] == job.seen
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails)) == (0, 0)


async def follow_run(
    bus: GatewayBus,
    record: RunRecord,
    last_event_id: int | None = None,
    between: Callable[[list[Seen]], Awaitable[None]] | None = None,
) -> list[Seen]:
    def finished_view(job: JobRecord, stored: StoredEvent) -> JobView:
        links = JobLinks(url=f"http://gateway/v1/jobs/{job.job_id}", events_url="http://gateway/")
        return job_view(job, stored, links)

    events: list[Seen] = []
    async for chunk in run_event_stream(bus, record, last_event_id, finished_view):
        events.extend(parse(chunk))
        if between is not None:
            await between(events)
    return events


async def test_run_stream_clients_joining_anywhere_or_stalling_get_each_finished_once(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext, small_ring: None
) -> None:
    run = RunRecord(
        run_id=new_run_id(),
        tenant="local",
        created_at=utc_now(),
        total_jobs=40,
        chunks=1,
        events_after_seq=(await debug.stream_info(s.EVENTS_STREAM)).state.last_seq,
    )
    records = [new_record(run.run_id) for _ in range(run.total_jobs)]
    await bus.runs.create(run)
    members = [RunMember(job_id=record.job_id) for record in records]
    await bus.runs.put_chunk(run.tenant, RunChunk(run_id=run.run_id, index=0, jobs=members))
    jobs_kv = await bus.js.key_value(s.JOBS_BUCKET)
    for record in records:
        await jobs_kv.put(record.job_id, record.model_dump_json().encode())
    expected: list[Seen] = [(0, "progress", "0")]
    fast_done = asyncio.Event()

    async def stall(events: list[Seen]) -> None:
        if len(events) >= 3:
            await fast_done.wait()

    stalled = asyncio.create_task(follow_run(bus, run, between=stall))
    crowd = [asyncio.create_task(follow_run(bus, run)) for _ in range(5)]
    joiners: list[tuple[int, asyncio.Task[list[Seen]]]] = []
    rng = random.Random(10)
    for done, record in enumerate(records, start=1):
        job = Job(worker, record)
        await job.start()
        await job.print("out\n")  # passes by as headers: not on the run stream
        seq = await job.finish()
        expected += [(seq, "finished", record.job_id), (seq, "progress", str(done))]
        if rng.random() < 0.4:
            last_event_id = rng.choice([seen[0] for seen in expected])
            joiner = asyncio.create_task(follow_run(bus, run, last_event_id))
            joiners.append((last_event_id, joiner))
        await asyncio.sleep(0.001)
    for events in await asyncio.gather(*crowd):
        assert events == expected
    assert not stalled.done()
    fast_done.set()
    assert await stalled == expected  # lapped by the ring, replayed, nothing lost
    for last_event_id, task in joiners:
        assert await task == [e for e in expected if e[0] > last_event_id], last_event_id
    # Resumed after the end: only the final progress, again.
    assert await follow_run(bus, run, expected[-1][0]) == expected[-1:]
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails)) == (0, 0)


async def _finished_run(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext, jobs: int
) -> tuple[RunRecord, list[Seen]]:
    """A run of `jobs` jobs, each started, printing and finished; its stream's events."""
    run = RunRecord(
        run_id=new_run_id(),
        tenant="local",
        created_at=utc_now(),
        total_jobs=jobs,
        chunks=1,
        events_after_seq=(await debug.stream_info(s.EVENTS_STREAM)).state.last_seq,
    )
    records = [new_record(run.run_id) for _ in range(jobs)]
    await bus.runs.create(run)
    members = [RunMember(job_id=record.job_id) for record in records]
    await bus.runs.put_chunk(run.tenant, RunChunk(run_id=run.run_id, index=0, jobs=members))
    jobs_kv = await bus.js.key_value(s.JOBS_BUCKET)
    expected: list[Seen] = [(0, "progress", "0")]
    for done, record in enumerate(records, start=1):
        await jobs_kv.put(record.job_id, record.model_dump_json().encode())
        job = Job(worker, record)
        await job.start()
        await job.print("out\n")
        seq = await job.finish()
        expected += [(seq, "finished", record.job_id), (seq, "progress", str(done))]
    return run, expected


def _count_event_reads(bus: GatewayBus, monkeypatch: Any) -> list[int]:
    """The stream positions whose events the gateway reads from now on, in order (the
    helper's `started` and output events carry no type header: those are read too)."""
    read: list[int] = []
    event_at = bus.event_at

    async def counted(seq: int) -> StoredEvent | None:
        read.append(seq)
        return await event_at(seq)

    monkeypatch.setattr(bus, "event_at", counted)
    return read


async def test_a_run_stream_resumed_late_reads_only_the_results_it_sends(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext, monkeypatch: Any
) -> None:
    # A client reconnecting near the end of a long run used to wait while the run's tail read
    # every result from the run's start (16 s for 20,000 jobs), and threw away all but the last.
    run, expected = await _finished_run(bus, worker, debug, jobs=30)
    finished = [seq for seq, kind, _ in expected if kind == "finished"]
    read = _count_event_reads(bus, monkeypatch)
    resume_at = finished[24]
    assert await follow_run(bus, run, resume_at) == [e for e in expected if e[0] > resume_at]
    assert [seq for seq in read if seq in finished] == finished[25:]
    read.clear()
    assert await follow_run(bus, run, expected[-1][0]) == expected[-1:]
    assert [seq for seq in read if seq in finished] == []
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails)) == (0, 0)


async def test_clients_resuming_after_a_run_ended_each_get_its_last_progress(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext
) -> None:
    run, expected = await _finished_run(bus, worker, debug, jobs=5)
    first_done = asyncio.Event()
    release = asyncio.Event()

    async def hold(events: list[Seen]) -> None:  # keeps its tail alive for the next client
        first_done.set()
        await release.wait()

    first = asyncio.create_task(follow_run(bus, run, expected[-1][0], between=hold))
    await first_done.wait()
    assert len(bus.tails) == 1
    # Joins the first client's tail, which has made its final entry already.
    second = await asyncio.wait_for(follow_run(bus, run, expected[-1][0]), 10)
    assert second == expected[-1:]
    release.set()
    assert await first == expected[-1:]
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails)) == (0, 0)


async def test_a_run_tail_started_by_a_resuming_client_serves_earlier_joiners_by_replay(
    bus: GatewayBus, worker: JetStreamContext, debug: JetStreamContext, small_ring: None
) -> None:
    run, expected = await _finished_run(bus, worker, debug, jobs=12)
    first_done = asyncio.Event()
    release = asyncio.Event()

    async def hold(events: list[Seen]) -> None:
        if events[-1] == expected[-1]:
            first_done.set()
            await release.wait()

    resume_at = expected[2 * 8][0]
    first = asyncio.create_task(follow_run(bus, run, resume_at, between=hold))
    await first_done.wait()
    # The tail holds entries from the first client's resume point on only.
    earlier = expected[2 * 3][0]
    assert await asyncio.wait_for(follow_run(bus, run, earlier), 10) == [
        e for e in expected if e[0] > earlier
    ]
    assert await asyncio.wait_for(follow_run(bus, run), 10) == expected
    release.set()
    assert await first == [e for e in expected if e[0] > resume_at]
    await settle(debug, bus)
    assert (await consumers(debug), len(bus.tails)) == (0, 0)
