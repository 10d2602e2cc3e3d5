"""The shared live tail of a job's (or a run's) events (real nats-server): however many
clients follow it, and wherever they join, each gets every event after its `Last-Event-ID`
exactly once and in order, through one JetStream consumer that is gone when the last client
leaves.

A worker identity publishes the events, the gateway's own code reads them; the ring is made
small so that replays, seams and slow clients falling behind happen within a few events.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.js import JetStreamContext

from bus import (
    FinishedEvent,
    JobRecord,
    JobResult,
    OutputEvent,
    RunChunk,
    RunMember,
    RunRecord,
    StartedEvent,
    StreamSettings,
    Verdict,
    connect,
    new_job_id,
    new_run_id,
    publish_model,
    utc_now,
)
from bus import subjects as s
from gateway import live_tail
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.run_sse import run_event_stream
from gateway.schemas import JobView
from gateway.sse import job_event_stream
from gateway.views import JobLinks, job_view
from gateway.workers_registry import WorkerRegistry
from tests.stack import NatsServer

Seen = tuple[int, str, str]  # id, event, stdout text (or the finished job's id)
_SETTLE_S = 10.0


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[GatewayBus]:
    gateway = await GatewayBus.start(
        nats_server.settings("gateway"), StreamSettings(), WorkerRegistry(10.0)
    )
    yield gateway
    await gateway.close()


@pytest.fixture
async def worker(nats_server: NatsServer, bus: GatewayBus) -> AsyncIterator[JetStreamContext]:
    nc = await connect(nats_server.settings("worker"), "worker", "test-worker")
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def debug(nats_server: NatsServer, bus: GatewayBus) -> AsyncIterator[JetStreamContext]:
    nc = await connect(nats_server.settings("debug"), "debug", "test-debug")
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
def small_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_tail, "RETAIN_ENTRIES", 16)


def new_record(run_id: str | None = None) -> JobRecord:
    return JobRecord(
        job_id=new_job_id(),
        run_id=run_id or new_run_id(),
        tenant="local",
        language="python",
        submitted_at=utc_now(),
    )


class Job:
    """A job's events as a worker publishes them, and what a client must see of them."""

    def __init__(self, js: JetStreamContext, record: JobRecord) -> None:
        self._js = js
        self.record = record
        self.seen: list[Seen] = [(0, "queued", "")]
        self._seq = 0
        self._offset = 0

    async def _publish(self, event: StartedEvent | OutputEvent | FinishedEvent) -> int:
        subject = s.events_subject(self.record.run_id, self.record.job_id)
        ack = await publish_model(self._js, subject, event, msg_id=event.dedup_key)
        self._seq += 1
        return ack.seq

    def _ids(self) -> dict[str, Any]:
        return {"job_id": self.record.job_id, "run_id": self.record.run_id, "attempt": 1}

    async def start(self) -> None:
        seq = await self._publish(StartedEvent(worker="w", seq=self._seq, **self._ids()))
        self.seen.append((seq, "started", ""))

    async def print(self, text: str) -> None:
        event = OutputEvent(
            type="stdout", data=text, offset=self._offset, seq=self._seq, **self._ids()
        )
        self._offset += len(text)
        self.seen.append((await self._publish(event), "stdout", text))

    async def finish(self) -> int:
        result = JobResult(verdict=Verdict.ACCEPTED, exit_code=0, finished_at=utc_now())
        event = FinishedEvent(worker="w", result=result, seq=self._seq, **self._ids())
        subject = s.events_subject(self.record.run_id, self.record.job_id)
        # With the headers a worker sets: a run stream reads only those.
        headers = {s.EVENT_TYPE_HEADER: "finished", s.VERDICT_HEADER: "accepted"}
        ack = await publish_model(self._js, subject, event, event.dedup_key, headers)
        self.seen.append((ack.seq, "finished", self.record.job_id))
        return ack.seq

    def after(self, last_event_id: int | None) -> list[Seen]:
        """What a client resuming after `last_event_id` must get."""
        return (
            self.seen if last_event_id is None else [e for e in self.seen if e[0] > last_event_id]
        )


def parse(chunk: bytes) -> list[Seen]:
    found: list[Seen] = []
    for frame in chunk.decode().split("\r\n\r\n"):
        if not frame:
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\r\n"))
        data = json.loads(fields["data"])
        text = data.get("data", "") if fields["event"] == "stdout" else ""
        if fields["event"] == "finished":
            text = data["id"]
        if fields["event"] == "progress":
            text = str(data["done"])
        found.append((int(fields["id"]), fields["event"], text))
    return found


class Connection:
    """A client's connection as a live tail pushes to it: it takes every write, except
    while `full` says its buffer is full (a slow reader), when the tail must hand the
    client back to its task, which waits for it (`between`)."""

    def __init__(self, events: list[Seen], full: Callable[[], bool] = lambda: False) -> None:
        self.events = events
        self.full = full
        self.pushed_events = 0

    def __call__(self, frames: bytes) -> bool:
        if self.full():
            return False
        pushed = parse(frames)
        self.events.extend(pushed)
        self.pushed_events += len(pushed)
        return True


async def follow(
    bus: GatewayBus,
    record: JobRecord,
    last_event_id: int | None = None,
    got: list[Seen] | None = None,
    between: Callable[[list[Seen]], Awaitable[None]] | None = None,
    push: Connection | None = None,
) -> list[Seen]:
    """A client of the job's event stream, as the HTTP endpoint drives it; with `push`, one
    whose connection the tail can write to (the frames go to `push.events`, which must be
    `got`)."""
    links = JobLinks(url=f"http://gateway/v1/jobs/{record.job_id}", events_url="http://gateway/")

    def finished_view(stored: StoredEvent) -> JobView:
        return job_view(record, stored, links)

    events = [] if got is None else got
    assert push is None or push.events is events
    async for chunk in job_event_stream(bus, record, last_event_id, finished_view, push):
        events.extend(parse(chunk))
        if between is not None:
            await between(events)
    return events


async def consumers(debug: JetStreamContext) -> int:
    return (await debug.stream_info(s.EVENTS_STREAM)).state.consumer_count


async def settle(debug: JetStreamContext, bus: GatewayBus) -> None:
    """Until the tails are torn down and their consumers deleted (which happens after the
    clients have gone, in the tails' own tasks)."""
    deadline = asyncio.get_running_loop().time() + _SETTLE_S
    while (
        await consumers(debug) or len(bus.tails)
    ) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


def tails_reading() -> float:
    return live_tail.LIVE_TAILS.labels("job")._value.get()


async def until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + _SETTLE_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


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
    # Fifty clients, one consumer: the tail's.
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
