"""The gateway's side of NATS: submit jobs, keep job records, read events, hear workers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from bus import (
    BusUnavailableError,
    CancelRequest,
    JobEvent,
    JobMessage,
    JobRecord,
    NatsSettings,
    Outgoing,
    QueueFullError,
    StreamSettings,
    WorkerHeartbeat,
    connect,
    decode_event,
    ensure_streams,
    message_context,
    page_of,
    publish_all,
    publish_model,
)
from bus import subjects as s
from gateway.event_feed import FEED_LINGER_S, EventFeed
from gateway.idempotency import IdempotencyKeys
from gateway.live_tail import LiveTails
from gateway.recent_records import RecentRecords
from gateway.recent_submissions import RecentSubmissions
from gateway.record_pages import RecordPages
from gateway.run_store import RunStore
from gateway.stored_events import DirectReader
from gateway.workers_registry import WorkerRegistry

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# nats-server's reason when a tenant's queue (its JOBS subject) is at its cap.
_TENANT_QUEUE_FULL = "maximum messages per subject exceeded"


@dataclass(frozen=True)
class StoredEvent:
    """An event with its position in the EVENTS stream (the SSE `id`)."""

    seq: int
    event: JobEvent
    context: Context


class GatewayBus:
    """One NATS connection for the whole gateway process."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        kv: KeyValue,
        registry: WorkerRegistry,
        runs: RunStore,
        idempotency: IdempotencyKeys,
        max_queued_per_tenant: int,
        feed_linger_s: float = FEED_LINGER_S,
        replicated: bool = False,
    ):
        self._max_queued = max_queued_per_tenant
        self._nc = nc
        self._js = js
        self._kv = kv
        self._pages = RecordPages(kv)
        self._records = RecentRecords()
        self.registry = registry
        self.runs = runs
        self.idempotency = idempotency
        self.tails = LiveTails()  # the shared live tails of followed jobs and runs
        # New events, for the jobs' live tails; stored ones, read without a consumer.
        self.feed = EventFeed(js, nc.new_inbox, feed_linger_s)
        # With replicas, any of which answers a direct get (a follower behind the leader too),
        # what a read must not miss is confirmed by the leader (see gateway.stored_events).
        self.stored = DirectReader(nc, js, s.EVENTS_STREAM, replicated)
        self.recent = RecentSubmissions(self.feed)  # jobs just posted, watched for their streams

    @property
    def nc(self) -> NATS:
        """The connection, for the run modules' pipelined publishes (`bus.publish_all`)."""
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context, for the run modules' consumers."""
        return self._js

    @classmethod
    async def start(
        cls,
        nats: NatsSettings,
        streams: StreamSettings,
        registry: WorkerRegistry,
        feed_linger_s: float = FEED_LINGER_S,
    ) -> GatewayBus:
        """Connect as `gateway`, create the streams, and start listening to heartbeats."""
        nc = await connect(nats, service="gateway", name="crucible-gateway")
        js = nc.jetstream()
        await ensure_streams(js, streams)
        kv = await js.key_value(s.JOBS_BUCKET)
        runs = RunStore(await js.key_value(s.RUNS_BUCKET))
        idempotency = IdempotencyKeys(await js.key_value(s.IDEMPOTENCY_BUCKET))
        bus = cls(
            nc,
            js,
            kv,
            registry,
            runs,
            idempotency,
            streams.max_queued_per_tenant,
            feed_linger_s,
            replicated=streams.replicas > 1,  # ensure_streams made the streams so
        )
        await bus.stored.start()
        await nc.subscribe(s.WORKERS_ALL, cb=bus._on_heartbeat)
        return bus

    async def cancel(self, job_ids: list[str]) -> None:
        """Record every cancel (for jobs still queued), then tell the workers (running ones).

        Every record is stored before any notice goes: a worker that a notice frees pulls the
        next queued job at once, which may be another of these, and must find its record.
        """
        requests = {
            job_id: CancelRequest(job_id=job_id).model_dump_json().encode() for job_id in job_ids
        }
        records = [
            Outgoing(s.cancel_key_subject(job_id), request, f"cancel-{job_id}")
            for job_id, request in requests.items()
        ]
        await publish_all(self._nc, records)  # in flight together: one round trip, not one each
        try:
            for job_id, request in requests.items():
                await self._nc.publish(s.cancel_subject(job_id), request)
            await self._nc.flush()
        except Exception as exc:
            raise BusUnavailableError(f"could not send a cancel: {exc!r}") from exc

    async def close(self) -> None:
        await self.feed.close()
        await self._nc.drain()

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            self.registry.record(WorkerHeartbeat.model_validate_json(msg.data))
        except ValidationError:
            log.warning("ignoring a malformed heartbeat on %s", msg.subject)

    async def submit(self, record: JobRecord, message: JobMessage) -> None:
        """Enqueue the job, then store its record; if either fails, nothing is left of it.

        The job goes first because nats-server itself refuses it when the tenant's queue is
        full (its per-subject cap): a full queue then writes nothing at all, without a check
        of the queue before (a request of its own, and one that other gateways race). Only a
        record makes a job visible (every endpoint reads it first), so a job whose record
        could not be stored is cancelled: a worker finishes it `cancelled` without running it.
        """
        subject = s.job_subject(record.tenant)
        with tracer.start_as_current_span(
            f"publish {s.JOBS_STREAM}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "publish",
                "messaging.destination.name": subject,
                "messaging.message.id": record.job_id,
                "crucible.job_id": record.job_id,
            },
        ):
            try:
                await publish_model(self._js, subject, message, msg_id=record.job_id)
            except QueueFullError as exc:
                raise self._queue_full(record.tenant, exc) from exc
        try:
            await self._kv.put(record.job_id, record.model_dump_json().encode())
        except Exception as exc:
            await asyncio.shield(self._take_back(record.job_id))
            raise BusUnavailableError(f"could not store job {record.job_id}: {exc!r}") from exc
        self._records.add(record)

    def _queue_full(self, tenant: str, refused: QueueFullError) -> QueueFullError:
        if _TENANT_QUEUE_FULL in str(refused):
            return QueueFullError(
                f"tenant {tenant} has {self._max_queued} unfinished jobs, as many as a tenant "
                "may have: wait for some to finish"
            )
        return QueueFullError(
            f"the job queue is full ({refused}; a tenant may have {self._max_queued} "
            "unfinished jobs): wait for some to finish"
        )

    async def _take_back(self, job_id: str) -> None:
        try:
            await self.cancel([job_id])
        except BusUnavailableError:
            # Its events, if it runs, belong to no record: no client ever sees them.
            log.exception("could not cancel job %s, whose record was not stored", job_id)

    async def unfinished(self, tenant: str) -> int:
        """How many of the tenant's jobs are queued or running (still in the work queue)."""
        subject = s.job_subject(tenant)
        try:
            info = await self._js.stream_info(s.JOBS_STREAM, subjects_filter=subject)
        except Exception as exc:
            raise BusUnavailableError(f"cannot read the {s.JOBS_STREAM} stream: {exc!r}") from exc
        return (info.state.subjects or {}).get(subject, 0)

    async def check_room(self, tenant: str, jobs: int) -> None:
        """Refuse a batch up front when it cannot fit in the tenant's queue.

        The server refuses each job beyond the cap anyway; checking first keeps a large run
        from being cut off part way.
        """
        queued = await self.unfinished(tenant)
        if queued + jobs > self._max_queued:
            raise QueueFullError(
                f"tenant {tenant} has {queued} unfinished jobs; {jobs} more would pass the "
                f"cap of {self._max_queued}: wait for some to finish, or submit fewer"
            )

    async def record(self, job_id: str) -> JobRecord | None:
        """The job's record, or None when there is no such job."""
        paged = page_of(job_id)
        if paged is not None:  # a run's job
            return await self._pages.record(*paged)
        record = self._records.get(job_id)
        if record is not None:
            return record
        try:
            entry = await self._kv.get(job_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        try:
            record = JobRecord.model_validate_json(entry.value)
        except ValidationError:
            return None  # a page of a run's records shares the bucket: its id is no job's
        self._records.add(record)
        return record

    async def last_event(self, record: JobRecord) -> StoredEvent | None:
        """The newest event of the job, which tells its status; None while queued.

        In a replicated stream, from its leader: a direct get may be answered by a replica
        that has not applied the newest events yet, and then a job that a client saw finish
        (on this gateway's stream of it) would read as still running.
        """
        subject = s.events_subject(record.run_id, record.job_id)
        direct = not self.stored.replicated
        try:
            raw = await self._js.get_last_msg(s.EVENTS_STREAM, subject, direct=direct)
        except NotFoundError:
            return None
        except APIError as exc:  # the leader's API answers errors (a 503 while it is elected)
            raise BusUnavailableError(f"cannot read the events of {record.job_id}: {exc}") from exc
        assert raw.data is not None and raw.seq is not None
        return StoredEvent(raw.seq, decode_event(raw.data), message_context(raw.headers))

    def new_inbox(self) -> str:
        """A reply subject under the gateway's own inbox prefix (its permissions allow no other)."""
        return self._nc.new_inbox()

    async def event_at(self, seq: int) -> StoredEvent | None:
        """The event stored at stream position `seq` (one that the stream has stored), or
        None when it has aged out.

        In a replicated stream, a replica that has not applied it yet answers that there is
        none: the leader is asked before it counts as gone.
        """
        try:
            raw = await self._js.get_msg(s.EVENTS_STREAM, seq=seq, direct=True)
        except NotFoundError:
            if not self.stored.replicated:
                return None
            try:
                raw = await self._js.get_msg(s.EVENTS_STREAM, seq=seq)
            except NotFoundError:
                return None
            except APIError as exc:
                raise BusUnavailableError(f"cannot read event {seq}: {exc}") from exc
        assert raw.data is not None
        return StoredEvent(seq, decode_event(raw.data), message_context(raw.headers))

    async def events_last_seq(self) -> int:
        """The EVENTS stream's newest position (0 when empty)."""
        try:
            info = await self._js.stream_info(s.EVENTS_STREAM)
        except Exception as exc:
            raise BusUnavailableError(f"cannot read the {s.EVENTS_STREAM} stream: {exc!r}") from exc
        return info.state.last_seq or 0

    async def streams_ready(self) -> bool:
        """True when the job queue and its worker consumer exist."""
        try:
            await self._js.consumer_info(s.JOBS_STREAM, s.WORKERS_CONSUMER)
            await self._js.stream_info(s.EVENTS_STREAM)
        except Exception:
            return False
        return True
