"""Queueing a run's jobs: validate all, then store records and job list, then enqueue.

Records go in pages (`RecordPage`, up to `RECORDS_PER_PAGE` jobs each), so that enqueueing a
job costs one JetStream publish rather than two; each job's message is built straight from
its already validated spec.

Nothing half-written: if the bus fails part way, the record pages and the job list are taken
back, so the run (or the append) is as if never asked for. Jobs already enqueued by then
still run, but belong to no run and no record, so no client ever sees them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import orjson
from fastapi import HTTPException
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from bus import (
    BusUnavailableError,
    JobMessage,
    JobSpec,
    Outgoing,
    PagedRecord,
    RecordPage,
    RunChunk,
    RunMember,
    kv_purge,
    new_job_id,
    paged_job_id,
    publish_all,
    utc_now,
)
from bus import subjects as s
from gateway.bus_client import GatewayBus
from gateway.job_traces import job_traces, span_headers, span_trace_id
from gateway.settings import GatewaySettings
from gateway.validation import check_spec, with_default_limits

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Jobs whose records share one KV value: a job's lookup reads its whole page, so pages stay
# small; one more write per 100 jobs is 1% of a run's publishes.
RECORDS_PER_PAGE = 100
# Large metadata starts a new page sooner: a page stays far below NATS's largest message.
_MAX_PAGE_BYTES = 1024 * 1024
_RECORD_BYTES = 200  # a record page entry beyond its metadata, generously
# Jobs traced, recorded and enqueued at a time: one window of pipelined publishes.
_WINDOW_JOBS = 1000
_WINDOWS_UNDER_WAY = 2


@dataclass(frozen=True)
class Page:
    """A record page: its id and the positions of its jobs in the submission."""

    page_id: str
    positions: range


@dataclass(frozen=True)
class PreparedJobs:
    """A submission's jobs, validated, with default limits filled in and ids given."""

    run_id: str
    tenant: str
    submitted_at: datetime
    specs: list[JobSpec]
    pages: list[Page]
    job_ids: list[str]


def _task_id(spec: JobSpec) -> str | None:
    value = spec.metadata.get("task_id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def _paginate(specs: list[JobSpec]) -> list[Page]:
    pages: list[Page] = []
    start, size = 0, 0
    for index, spec in enumerate(specs):
        entry = _RECORD_BYTES + (len(orjson.dumps(spec.metadata)) if spec.metadata else 0)
        if index > start and (index - start == RECORDS_PER_PAGE or size + entry > _MAX_PAGE_BYTES):
            pages.append(Page(new_job_id(), range(start, index)))
            start, size = index, 0
        size += entry
    pages.append(Page(new_job_id(), range(start, len(specs))))
    return pages


def prepare_jobs(
    specs: list[JobSpec], run_id: str, tenant: str, settings: GatewaySettings
) -> PreparedJobs:
    """Check every spec (the error names the first bad job) and give it its id."""
    checked: list[JobSpec] = []
    for index, spec in enumerate(specs):
        try:
            check_spec(spec, settings)
        except HTTPException as exc:
            raise HTTPException(exc.status_code, f"jobs[{index}]: {exc.detail}") from None
        checked.append(with_default_limits(spec, settings))
    pages = _paginate(checked)
    job_ids = [paged_job_id(page.page_id, i) for page in pages for i in range(len(page.positions))]
    return PreparedJobs(run_id, tenant, utc_now(), checked, pages, job_ids)


def chunk_of(index: int, jobs: PreparedJobs) -> RunChunk:
    members = [
        RunMember(job_id=job_id, task_id=_task_id(spec))
        for job_id, spec in zip(jobs.job_ids, jobs.specs, strict=True)
    ]
    return RunChunk(run_id=jobs.run_id, index=index, jobs=members)


def _record_page(jobs: PreparedJobs, page: Page, trace_ids: dict[int, str | None]) -> Outgoing:
    records = RecordPage(
        run_id=jobs.run_id,
        tenant=jobs.tenant,
        submitted_at=jobs.submitted_at,
        jobs=[
            PagedRecord(
                language=jobs.specs[i].language,
                trace_id=trace_ids[i],
                metadata=jobs.specs[i].metadata,
            )
            for i in page.positions
        ],
    )
    return Outgoing(
        subject=s.job_record_subject(page.page_id),
        payload=records.model_dump_json().encode(),
        msg_id=f"record.{page.page_id}",
    )


class _Payloads:
    """Job messages as `JobMessage.model_dump_json()` writes them, with the fields that all
    jobs of a submission share serialized once: per job only its (validated) spec is."""

    def __init__(self, jobs: PreparedJobs) -> None:
        shared = JobMessage(
            job_id="",
            run_id=jobs.run_id,
            tenant=jobs.tenant,
            spec=jobs.specs[0],
            submitted_at=jobs.submitted_at,
        ).model_dump_json(exclude={"job_id", "spec"})
        self._shared = b'",' + shared[1:-1].encode() + b',"spec":'

    def payload(self, job_id: str, spec: JobSpec) -> bytes:
        # Job ids are hex and dashes (bus.ids): nothing in them needs escaping.
        return (
            b'{"job_id":"' + job_id.encode() + self._shared + spec.model_dump_json().encode() + b"}"
        )


def _windows(jobs: PreparedJobs) -> Iterator[list[Page]]:
    window: list[Page] = []
    for page in jobs.pages:
        if window and sum(len(p.positions) for p in window) + len(page.positions) > _WINDOW_JOBS:
            yield window
            window = []
        window.append(page)
    yield window


async def _enqueue_window(
    bus: GatewayBus, jobs: PreparedJobs, pages: list[Page], stored: list[Outgoing]
) -> None:
    """Trace one window's jobs, store their record pages, then enqueue them."""
    positions = range(pages[0].positions.start, pages[-1].positions.stop)
    job_ids = jobs.job_ids[positions.start : positions.stop]
    with job_traces(jobs.tenant, jobs.run_id, job_ids) as spans:
        trace_ids = {i: span_trace_id(span) for i, span in zip(positions, spans, strict=True)}
        records = [_record_page(jobs, page, trace_ids) for page in pages]
        stored.extend(records)
        await publish_all(bus.nc, records)
        payloads = _Payloads(jobs)
        subject = s.job_subject(jobs.tenant)
        queued = [
            Outgoing(subject, payloads.payload(job_id, jobs.specs[i]), job_id, span_headers(span))
            for i, job_id, span in zip(positions, job_ids, spans, strict=True)
        ]
        await publish_all(bus.nc, queued)


async def enqueue(bus: GatewayBus, chunk: RunChunk, jobs: PreparedJobs) -> None:
    """Store the job list, then, a window of jobs at a time, their record pages and then the
    jobs themselves; undo it all on failure.

    Each job's trace spans its own window's publishes. Two windows are under way at once, so
    that one is prepared while NATS stores the other; no more, as the garbage collector's
    full passes grow with what is alive.
    """
    stored: list[Outgoing] = []  # record pages, to take back
    windows: list[asyncio.Task[None]] = []
    with tracer.start_as_current_span(
        f"publish {s.JOBS_STREAM}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "publish",
            "messaging.batch.message_count": len(jobs.job_ids),
            "crucible.run_id": chunk.run_id,
        },
    ):
        try:
            await bus.runs.put_chunk(jobs.tenant, chunk)
            for pages in _windows(jobs):
                if len(windows) >= _WINDOWS_UNDER_WAY:
                    await windows[-_WINDOWS_UNDER_WAY]
                windows.append(asyncio.create_task(_enqueue_window(bus, jobs, pages, stored)))
                await asyncio.sleep(0)  # let it send before preparing the next
            await asyncio.gather(*windows)
        except BusUnavailableError:
            for window in windows:
                window.cancel()
            await asyncio.gather(*windows, return_exceptions=True)  # none writes any more
            await asyncio.shield(_forget(bus, jobs.tenant, chunk, stored))
            raise


async def _forget(bus: GatewayBus, tenant: str, chunk: RunChunk, pages: list[Outgoing]) -> None:
    # If even this fails, the records expire with the buckets' TTL.
    try:
        await bus.runs.delete_chunk(tenant, chunk.run_id, chunk.index)
        await publish_all(
            bus.nc, [kv_purge(page.subject, f"purge.{page.msg_id}") for page in pages]
        )
    except Exception:
        log.exception("could not take back the records of run %s", chunk.run_id)
