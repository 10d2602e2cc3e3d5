"""An attempt's events on a real nats-server: order, coalesced output with exact offsets, and
fencing (a refused first store is a stale history; a later one, another attempt's takeover)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bus import (
    JetStreamRequests,
    JobMessage,
    JobResult,
    OutputEvent,
    StartedEvent,
    SupersededError,
    Verdict,
)
from bus import subjects as s
from bus.models import utc_now
from sandbox import OutputChunk
from tests.stack import NatsServer
from tests.workers.bus_helpers import connected, ensure_layout, new_job, stored_events
from workers.events import MAX_EVENT_BYTES, MAX_QUEUED_BYTES, AttemptEvents, StaleHistoryError

RESULT = JobResult(verdict=Verdict.ACCEPTED, finished_at=utc_now())


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamRequests]:
    await ensure_layout(nats_server)
    async with connected(nats_server, "worker") as nc:
        requests = JetStreamRequests(nc)
        await requests.start()
        yield requests
        await requests.close()


def chunks(stream: str, *parts: str, start: int = 0) -> list[OutputChunk]:
    """Consecutive chunks of one stream, each offset the bytes before it."""
    out = []
    for part in parts:
        out.append(OutputChunk(stream=stream, data=part, offset=start))  # type: ignore[arg-type]
        start += len(part.encode())
    return out


def attempt(
    js: JetStreamRequests, job: JobMessage, number: int = 1, after: int = 0
) -> AttemptEvents:
    return AttemptEvents(js, job, number, "test-worker", after_seq=after)


async def test_output_queued_behind_a_store_in_flight_is_one_event(
    js: JetStreamRequests, nats_server: NatsServer
) -> None:
    job = new_job()
    events = attempt(js, job)
    events.started()
    # Nothing has been stored yet (the writer has not run): all of it queues behind `started`.
    for chunk in chunks("stdout", "tick 0\n", "tick 1\n", "héllo ", "wörld\n"):
        await events.output(chunk)
    await events.finished(RESULT)
    stored = await stored_events(nats_server, job)
    assert [e.type for e in stored] == ["started", "stdout", "finished"]
    assert [e.seq for e in stored] == [1, 2, 3]
    output = stored[1]
    assert isinstance(output, OutputEvent)
    assert (output.data, output.offset) == ("tick 0\ntick 1\nhéllo wörld\n", 0)


async def test_streams_alternating_or_gaps_in_offsets_stay_apart(
    js: JetStreamRequests, nats_server: NatsServer
) -> None:
    job = new_job()
    events = attempt(js, job)
    events.started()
    sent = [
        *chunks("stdout", "a\n", "b\n"),
        *chunks("stderr", "oops\n"),
        *chunks("stdout", "c\n", start=4),
        # Not contiguous (bytes 6-7 never came as text): kept apart, so offsets stay exact.
        *chunks("stdout", "e\n", start=8),
    ]
    for chunk in sent:
        await events.output(chunk)
    await events.finished(RESULT)
    stored = [e for e in await stored_events(nats_server, job) if isinstance(e, OutputEvent)]
    assert [(e.type, e.data, e.offset) for e in stored] == [
        ("stdout", "a\nb\n", 0),
        ("stderr", "oops\n", 0),
        ("stdout", "c\n", 4),
        ("stdout", "e\n", 8),
    ]


async def test_coalesced_events_are_bounded_and_lose_no_byte(
    js: JetStreamRequests, nats_server: NatsServer
) -> None:
    job = new_job()
    events = attempt(js, job)
    events.started()
    parts = [f"{i:05d}" + "x" * 60_000 + "\n" for i in range(30)]  # 1.8 MB, past the queue cap
    for chunk in chunks("stdout", *parts):
        await events.output(chunk)
    await events.finished(RESULT)
    stored = [e for e in await stored_events(nats_server, job) if isinstance(e, OutputEvent)]
    assert len(stored) > 1
    assert all(len(e.data.encode()) <= MAX_EVENT_BYTES for e in stored)
    assert "".join(e.data for e in stored) == "".join(parts)
    offsets = [sum(len(e.data.encode()) for e in stored[:i]) for i in range(len(stored))]
    assert [e.offset for e in stored] == offsets
    assert len("".join(parts)) > MAX_QUEUED_BYTES


async def test_a_refused_first_store_is_a_stale_history(
    js: JetStreamRequests, nats_server: NatsServer
) -> None:
    job = new_job()
    earlier = attempt(js, job)
    earlier.started()
    await earlier.finished(RESULT)
    # This attempt believes nothing is stored (a first delivery, as numbered by the server).
    stale = attempt(js, job)
    stale.started()
    await stale.output(chunks("stdout", "x\n")[0])  # dropped once `started` is refused
    await asyncio.sleep(0.1)  # the refusal is in: later output is dropped at once
    await stale.output(chunks("stdout", "y\n", start=2)[0])
    with pytest.raises(StaleHistoryError):
        await stale.finished(RESULT)
    assert [e.type for e in await stored_events(nats_server, job)] == ["started", "finished"]


async def test_a_cut_off_attempt_stores_nothing_after_the_newer_one(
    js: JetStreamRequests, nats_server: NatsServer
) -> None:
    job = new_job()
    old = attempt(js, job)
    old.started()
    await old.output(chunks("stdout", "one\n")[0])
    while len(await stored_events(nats_server, job)) < 2:  # started and the line, stored
        await asyncio.sleep(0.01)
    seq = await last_seq(js, job)
    # The job is redelivered; the new attempt writes after the newest event it found.
    new = attempt(js, job, number=2, after=seq)
    new.started()
    await new.finished(RESULT)
    with pytest.raises(SupersededError) as refused:
        await old.finished(RESULT)
    assert not isinstance(refused.value, StaleHistoryError)
    stored = await stored_events(nats_server, job)
    assert [(e.attempt, e.type) for e in stored] == [
        (1, "started"),
        (1, "stdout"),
        (2, "started"),
        (2, "finished"),
    ]
    assert isinstance(stored[0], StartedEvent)


async def last_seq(js: JetStreamRequests, job: JobMessage) -> int:
    msg = await js.last_message(s.EVENTS_STREAM, s.events_subject(job.run_id, job.job_id))
    assert msg is not None
    return msg.seq
