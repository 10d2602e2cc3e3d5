"""The gateway's Prometheus metrics at /metrics: submissions, streams, and the queue as
JetStream and the workers' heartbeats report it (refreshed every few seconds)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from bus import subjects as s
from gateway.bus_client import GatewayBus

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")

_REFRESH_S = 2.0

JOBS_SUBMITTED = Counter(
    "crucible_jobs_submitted", "Jobs accepted into the queue.", ["via"]
)  # via: job (POST /v1/jobs) or run (POST /v1/runs and appends)
SSE_CLIENTS = Gauge("crucible_sse_clients", "Event streams open now.", ["stream"])
QUEUE_JOBS = Gauge(
    "crucible_queue_jobs", "Jobs in the JOBS work queue: waiting, or running and not yet acked."
)
QUEUE_WAITING = Gauge("crucible_queue_waiting", "Jobs no worker has taken yet (consumer lag).")
QUEUE_RUNNING = Gauge("crucible_queue_running", "Jobs taken by a worker and not yet acked.")
REDELIVERED = Gauge(
    "crucible_queue_redelivered", "Jobs being run again after a worker failed to ack them."
)
WORKERS = Gauge("crucible_workers", "Workers heard from recently.")
WORKER_SLOTS = Gauge("crucible_worker_slots_total", "Jobs the live workers can run at once.")
WORKER_SLOTS_BUSY = Gauge("crucible_worker_slots_in_use", "Of those, slots running a job now.")


async def _refresh_once(bus: GatewayBus) -> None:
    info = await bus.js.consumer_info(s.JOBS_STREAM, s.WORKERS_CONSUMER)
    stream = await bus.js.stream_info(s.JOBS_STREAM)
    QUEUE_JOBS.set(stream.state.messages)
    QUEUE_WAITING.set(info.num_pending or 0)
    QUEUE_RUNNING.set(info.num_ack_pending or 0)
    REDELIVERED.set(info.num_redelivered or 0)
    live = bus.registry.live()
    WORKERS.set(len(live))
    WORKER_SLOTS.set(sum(worker.capacity for worker in live))
    WORKER_SLOTS_BUSY.set(sum(worker.busy for worker in live))


async def refresh_forever(bus: GatewayBus) -> None:
    """Keep the queue gauges current; a failed read (NATS away) leaves the last values."""
    while True:
        try:
            await _refresh_once(bus)
        except Exception as exc:
            log.debug("could not refresh queue metrics: %r", exc)
        await asyncio.sleep(_REFRESH_S)


async def counted(stream: str, events: AsyncIterator[T]) -> AsyncIterator[T]:
    """`events`, counted in `crucible_sse_clients` while a client is connected."""
    gauge = SSE_CLIENTS.labels(stream)
    gauge.inc()
    try:
        async for event in events:
            yield event
    finally:
        gauge.dec()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus exposition: this gateway's counters and the queue it sees."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
