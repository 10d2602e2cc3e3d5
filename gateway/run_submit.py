"""Queueing a run's jobs: validate all, then store records and job list, then enqueue.

Nothing half-written: if the bus fails part way, the records and the job list are taken
back, so the run (or the append) is as if never asked for. Jobs already enqueued by then
still run, but belong to no run and no record, so no client ever sees them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import HTTPException
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from bus import (
    BusUnavailableError,
    JobMessage,
    JobRecord,
    JobSpec,
    Outgoing,
    RunChunk,
    RunMember,
    kv_purge,
    new_job_id,
    publish_all,
    utc_now,
)
from bus import subjects as s
from gateway.bus_client import GatewayBus
from gateway.job_traces import job_traces, span_headers, span_trace_id
from gateway.settings import GatewaySettings
from gateway.validation import check_spec, with_default_limits
from observability import current_trace_id

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class PreparedJobs:
    """A submission's jobs, validated and given ids, ready to store."""

    records: list[JobRecord]
    messages: list[JobMessage]

    @property
    def job_ids(self) -> list[str]:
        return [record.job_id for record in self.records]


def _task_id(spec: JobSpec) -> str | None:
    value = spec.metadata.get("task_id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def prepare_jobs(
    specs: list[JobSpec], run_id: str, tenant: str, settings: GatewaySettings
) -> PreparedJobs:
    """Check every spec (the error names the first bad job) and build its record."""
    now = utc_now()
    trace_id = current_trace_id()
    records: list[JobRecord] = []
    messages: list[JobMessage] = []
    for index, spec in enumerate(specs):
        try:
            check_spec(spec, settings)
        except HTTPException as exc:
            raise HTTPException(exc.status_code, f"jobs[{index}]: {exc.detail}") from None
        spec = with_default_limits(spec, settings)
        job_id = new_job_id()
        records.append(
            JobRecord(
                job_id=job_id,
                run_id=run_id,
                tenant=tenant,
                language=spec.language,
                submitted_at=now,
                trace_id=trace_id,
                metadata=spec.metadata,
            )
        )
        messages.append(
            JobMessage(job_id=job_id, run_id=run_id, tenant=tenant, spec=spec, submitted_at=now)
        )
    return PreparedJobs(records, messages)


def chunk_of(run_id: str, index: int, jobs: PreparedJobs) -> RunChunk:
    members = [
        RunMember(job_id=message.job_id, task_id=_task_id(message.spec))
        for message in jobs.messages
    ]
    return RunChunk(run_id=run_id, index=index, jobs=members)


async def enqueue(bus: GatewayBus, tenant: str, chunk: RunChunk, jobs: PreparedJobs) -> None:
    """Store the job records and the chunk, then enqueue the jobs; undo on failure."""
    with (
        tracer.start_as_current_span(
            f"publish {s.JOBS_STREAM}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "publish",
                "messaging.batch.message_count": len(jobs.messages),
                "crucible.run_id": chunk.run_id,
            },
        ),
        job_traces(jobs.messages) as spans,
    ):
        for record, span in zip(jobs.records, spans, strict=True):
            record.trace_id = span_trace_id(span)
        records = [
            Outgoing(
                subject=s.job_record_subject(record.job_id),
                payload=record.model_dump_json().encode(),
                msg_id=f"record.{record.job_id}",
            )
            for record in jobs.records
        ]
        queued = [
            Outgoing(
                subject=s.job_subject(message.tenant),
                payload=message.model_dump_json().encode(),
                msg_id=message.job_id,
                headers=span_headers(span),
            )
            for message, span in zip(jobs.messages, spans, strict=True)
        ]
        try:
            await publish_all(bus.js, records)
            await bus.runs.put_chunk(tenant, chunk)
            await publish_all(bus.js, queued)
        except BusUnavailableError:
            await asyncio.shield(_forget(bus, tenant, chunk, jobs))
            raise


async def _forget(bus: GatewayBus, tenant: str, chunk: RunChunk, jobs: PreparedJobs) -> None:
    # If even this fails, the records expire with the buckets' TTL.
    try:
        await bus.runs.delete_chunk(tenant, chunk.run_id, chunk.index)
        await publish_all(
            bus.js,
            [kv_purge(s.job_record_subject(job_id), f"purge.{job_id}") for job_id in jobs.job_ids],
        )
    except Exception:
        log.exception("could not take back the records of run %s", chunk.run_id)
