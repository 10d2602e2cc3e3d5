"""A job's events as Server-Sent Events, resumable with `Last-Event-ID`.

Ids are positions: `0` is the `queued` event (derived from the job's record), every other id
is the event's sequence in the EVENTS stream, so a reconnecting client names exactly where it
stopped, even across gateway restarts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sse_starlette import ServerSentEvent

from bus import FinishedEvent, JobRecord
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.schemas import JobView
from gateway.views import queued_data

QUEUED_EVENT_ID = 0

tracer = trace.get_tracer(__name__)


def _sse(stored: StoredEvent, finished_view: Callable[[StoredEvent], JobView]) -> ServerSentEvent:
    event = stored.event
    if isinstance(event, FinishedEvent):
        # Without events_url: its token is re-issued per request, and a replayed event must
        # be byte for byte the event first sent.
        data = finished_view(stored).model_dump_json(exclude={"events_url"})
    else:
        data = event.model_dump_json(exclude={"run_id"})
    return ServerSentEvent(id=str(stored.seq), event=event.type, data=data)


async def job_event_stream(
    bus: GatewayBus,
    record: JobRecord,
    last_event_id: int | None,
    finished_view: Callable[[StoredEvent], JobView],
) -> AsyncIterator[ServerSentEvent]:
    """Every event after `last_event_id` (all of them when None), ending after `finished`."""
    if last_event_id is None:
        yield ServerSentEvent(
            id=str(QUEUED_EVENT_ID), event="queued", data=queued_data(record).model_dump_json()
        )
    else:
        last = await bus.last_event(record)
        if last is not None and isinstance(last.event, FinishedEvent) and last.seq <= last_event_id:
            return  # the client has seen the end already
    start_seq = (last_event_id or QUEUED_EVENT_ID) + 1
    seen: set[str] = set()
    async with bus.job_events(record, start_seq) as events:
        async for stored in events:
            # A re-published event (same job, attempt and seq) is shown once.
            if stored.event.dedup_key in seen:
                continue
            seen.add(stored.event.dedup_key)
            if isinstance(stored.event, FinishedEvent):
                # Ended before the yield: a span must not stay current across a generator's
                # suspension, where its context could leak into the caller.
                span = tracer.start_span(
                    "sse deliver finished",
                    context=stored.context,
                    kind=SpanKind.CONSUMER,
                    attributes={"crucible.job_id": record.job_id, "sse.event_id": stored.seq},
                )
                finished = _sse(stored, finished_view)
                span.end()
                yield finished
                return
            yield _sse(stored, finished_view)
