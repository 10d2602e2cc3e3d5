"""A job's events as Server-Sent Events, resumable with `Last-Event-ID`.

Ids are positions: `0` is the `queued` event (derived from the job's record), every other id
is the event's sequence in the EVENTS stream, so a reconnecting client names exactly where it
stopped, even across gateway restarts. All the clients of a job share one live tail
(`gateway.live_tail`): each event is parsed and encoded once, whoever follows it.

No stream makes a JetStream consumer: a tail takes its job's new events from the gateway's
event feed (`gateway.event_feed`, one consumer for every job), and what was stored before
the feed's position, or before a ring's start, comes from direct gets
(`gateway.stored_events`), which in a replicated stream the leader confirms: the replica that
answers may not have applied what the feed has already handed out.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sse_starlette import ServerSentEvent

from bus import FinishedEvent, JobRecord, decode_event, message_context
from bus import subjects as s
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.event_feed import PendingWatch, Watch
from gateway.live_tail import LiveTail, Push, Source, follow
from gateway.schemas import JobView
from gateway.stored_events import StoredMessage
from gateway.views import queued_data

QUEUED_EVENT_ID = 0

tracer = trace.get_tracer(__name__)

FinishedView = Callable[[StoredEvent], JobView]


@dataclass(eq=False)
class JobEntry:
    """One event of a job, its frame encoded once for every client."""

    seq: int
    key: str  # the event's (job, attempt, seq): a re-publish has the same
    size: int
    final: bool
    frame: bytes  # empty for `finished`, which each client renders with its own links
    finished: StoredEvent | None = None
    rendered: dict[str, bytes] = field(default_factory=dict)  # `finished` frames by job URL

    @property
    def shared_frame(self) -> bytes | None:
        return None if self.final else self.frame


async def _entries(messages: AsyncIterator[StoredMessage]) -> AsyncGenerator[JobEntry]:
    seen: set[str] = set()
    async for msg in messages:
        seq = msg.seq
        event = decode_event(msg.data)
        if event.dedup_key in seen:
            continue  # a re-published event (same job, attempt and seq) is shown once
        seen.add(event.dedup_key)
        if isinstance(event, FinishedEvent):
            stored = StoredEvent(seq, event, message_context(msg.headers))
            yield JobEntry(seq, event.dedup_key, len(msg.data), True, b"", stored)
        else:
            data = event.model_dump_json(exclude={"run_id"})
            frame = ServerSentEvent(id=str(seq), event=event.type, data=data).encode()
            yield JobEntry(seq, event.dedup_key, len(frame), False, frame)


async def _stored_then_new(
    bus: GatewayBus, subject: str, start_seq: int
) -> AsyncGenerator[StoredMessage]:
    """The subject's messages from `start_seq` on, live: what the stream holds up to the
    feed's position when the watch began, then what the feed hands out after it."""
    async with bus.feed.watch(subject) as watch:
        stored = bus.stored.read(subject, start_seq, end_seq=watch.boundary_seq)
        async with aclosing(stored) as messages:
            async for msg in messages:
                yield msg
        async for msg in watch.messages():
            if msg.seq >= start_seq:  # a lagging feed may hand out older ones
                yield msg


def _live(bus: GatewayBus, subject: str) -> Source[JobEntry]:
    """The job's entries from a position on, live (for its tail)."""

    @asynccontextmanager
    async def entries(start_seq: int) -> AsyncIterator[AsyncIterator[JobEntry]]:
        async with aclosing(_entries(_stored_then_new(bus, subject, start_seq))) as read:
            yield read

    return entries


def _watched(bus: GatewayBus, watch: Watch) -> Source[JobEntry]:
    """The job's entries through a watch made before the job was enqueued: every one of
    them comes through it (the job had no event before), so nothing is read from the stream."""

    @asynccontextmanager
    async def entries(start_seq: int) -> AsyncIterator[AsyncIterator[JobEntry]]:
        try:
            new = (msg async for msg in watch.messages() if msg.seq >= start_seq)
            async with aclosing(_entries(new)) as read:
                yield read
        finally:
            bus.feed.release(watch)

    return entries


def _replay(bus: GatewayBus, subject: str) -> Source[JobEntry]:
    """The job's entries from a position on, up to what is stored (for a replay): up to what
    the stream's leader has, in a replicated stream, so up to the tail's start at least."""

    @asynccontextmanager
    async def entries(start_seq: int) -> AsyncIterator[AsyncIterator[JobEntry]]:
        async with aclosing(_entries(bus.stored.read(subject, start_seq))) as read:
            yield read

    return entries


def _finished_frame(entry: JobEntry, finished_view: FinishedView) -> bytes:
    assert entry.finished is not None
    return finished_frame(entry.rendered, entry.seq, finished_view(entry.finished))


def finished_frame(rendered: dict[str, bytes], seq: int, view: JobView) -> bytes:
    """A `finished` event's frame, encoded once per address clients reach the gateway by
    (clients that come by the same address get the same links), kept in `rendered`."""
    frame = rendered.get(view.url)
    if frame is None:
        # Without events_url: its token is re-issued per request, and a replayed event must
        # be byte for byte the event first sent.
        data = view.model_dump_json(exclude={"events_url"})
        frame = ServerSentEvent(id=str(seq), event="finished", data=data).encode()
        rendered[view.url] = frame
    return frame


async def job_event_stream(
    bus: GatewayBus,
    record: JobRecord,
    last_event_id: int | None,
    finished_view: FinishedView,
    push: Push | None = None,
    watched: PendingWatch | None = None,
) -> AsyncIterator[bytes]:
    """Every event after `last_event_id` (all of them when None), ending after `finished`;
    with `push`, the live tail may write events straight to the client's connection. With
    `watched`, a watch of the job's events made before it was enqueued (the stream of a
    submission), the job's tail reads nothing back from the stream; whoever made it closes
    it at the end (its response does), which releases it unless the tail took it.
    """
    tail_start_seq = 1
    if last_event_id is None:
        queued = queued_data(record).model_dump_json()
        yield ServerSentEvent(id=str(QUEUED_EVENT_ID), event="queued", data=queued).encode()
    else:
        last = await bus.last_event(record)
        if last is not None and isinstance(last.event, FinishedEvent) and last.seq <= last_event_id:
            return  # the client has seen the end already
        if last is not None:
            # A tail this client starts must not begin past what the stream holds: a later
            # client with an older id replays up to the tail's start, which assumes that
            # everything before it is stored already.
            tail_start_seq = min(last_event_id, last.seq) + 1
    after = last_event_id or QUEUED_EVENT_ID
    subject = s.events_subject(record.run_id, record.job_id)

    def make() -> LiveTail[JobEntry]:
        watch = None if watched is None else watched.take()
        if watch is not None:
            # Made before the job existed: the tail covers the job from its first position.
            return LiveTail("job", _watched(bus, watch), 1)
        return LiveTail("job", _live(bus, subject), tail_start_seq)

    async for batch in follow(bus.tails, subject, after, make, _replay(bus, subject), push):
        end = batch[-1]
        frames = b"".join(entry.frame for entry in batch)  # `finished` adds nothing: it is last
        if not end.final:
            yield frames
            continue
        if frames:
            yield frames
        if end.seq <= after:
            return  # seen already
        # Ended before the yield: a span must not stay current across a generator's
        # suspension, where its context could leak into the caller.
        assert end.finished is not None
        span = tracer.start_span(
            "sse deliver finished",
            context=end.finished.context,
            kind=SpanKind.CONSUMER,
            attributes={"crucible.job_id": record.job_id, "sse.event_id": end.seq},
        )
        frame = _finished_frame(end, finished_view)
        span.end()
        yield frame
        return
