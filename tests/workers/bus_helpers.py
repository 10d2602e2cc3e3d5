"""A real nats-server set up as the gateway leaves it, and readers of what workers stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.js.errors import NotFoundError

from bus import (
    JOB_EVENT,
    Connection,
    JobEvent,
    JobMessage,
    JobSpec,
    StreamSettings,
    connect,
    ensure_streams,
    new_job_id,
    new_run_id,
    utc_now,
)
from bus import subjects as s
from tests.stack import NatsServer


@asynccontextmanager
async def connected(server: NatsServer, service: str) -> AsyncIterator[Connection]:
    nc = await connect(server.settings(service), service, f"test-{service}")
    try:
        yield nc
    finally:
        await nc.close()


async def ensure_layout(server: NatsServer) -> None:
    """Streams, buckets and the workers consumer, created as the gateway creates them."""
    async with connected(server, "gateway") as nc:
        await ensure_streams(nc.jetstream(), StreamSettings())


def new_job(code: str = "print(1)") -> JobMessage:
    return JobMessage(
        job_id=new_job_id(),
        run_id=new_run_id(),
        tenant="tests",
        spec=JobSpec(language="python", code=code),
        submitted_at=utc_now(),
    )


async def stored_events(server: NatsServer, job: JobMessage) -> list[JobEvent]:
    """Every event stored for `job`, in stream order (read-only identity)."""
    async with connected(server, "debug") as nc:
        js = nc.jetstream()
        subject = s.events_subject(job.run_id, job.job_id)
        try:
            last = await js.get_last_msg(s.EVENTS_STREAM, subject, direct=True)
        except NotFoundError:
            return []
        sub = await js.subscribe(subject, stream=s.EVENTS_STREAM, ordered_consumer=True)
        events = []
        while True:
            msg = await sub.next_msg(timeout=5)
            events.append(JOB_EVENT.validate_json(msg.data))
            if msg.metadata.sequence.stream >= (last.seq or 0):
                return events
