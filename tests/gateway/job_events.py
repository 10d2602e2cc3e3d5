"""A job's events as a worker publishes them, and clients of its event stream as the HTTP
endpoint drives them, for the live tail and event feed tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js import JetStreamContext

from bus import (
    FinishedEvent,
    JobRecord,
    JobResult,
    OutputEvent,
    StartedEvent,
    Verdict,
    new_job_id,
    new_run_id,
    publish_model,
    utc_now,
)
from bus import subjects as s
from gateway import live_tail
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.event_feed import PendingWatch
from gateway.schemas import JobView
from gateway.sse import job_event_stream
from gateway.views import JobLinks, job_view

Seen = tuple[int, str, str]  # id, event, stdout text (or the finished job's id)
SETTLE_S = 10.0
# The event feed stops this soon after its last watcher leaves: the tests count consumers.
FEED_LINGER_S = 0.05


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
    watched: PendingWatch | None = None,
) -> list[Seen]:
    """A client of the job's event stream, as the HTTP endpoint drives it; with `push`, one
    whose connection the tail can write to (the frames go to `push.events`, which must be
    `got`); with `watched`, the stream of a submission, watched before the job existed."""
    links = JobLinks(url=f"http://gateway/v1/jobs/{record.job_id}", events_url="http://gateway/")

    def finished_view(stored: StoredEvent) -> JobView:
        return job_view(record, stored, links)

    events = [] if got is None else got
    assert push is None or push.events is events
    stream = job_event_stream(bus, record, last_event_id, finished_view, push, watched)
    try:
        async for chunk in stream:
            events.extend(parse(chunk))
            if between is not None:
                await between(events)
    finally:
        if watched is not None:
            watched.close()  # as the response does
    return events


async def consumers(debug: JetStreamContext) -> int:
    return (await debug.stream_info(s.EVENTS_STREAM)).state.consumer_count


async def settle(debug: JetStreamContext, bus: GatewayBus) -> None:
    """Until the tails are torn down and their consumers deleted (which happens after the
    clients have gone, in the tails' own tasks; the event feed's once it has lingered)."""
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while (
        await consumers(debug) or len(bus.tails)
    ) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


def tails_reading() -> float:
    return live_tail.LIVE_TAILS.labels("job")._value.get()


async def until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.01)
