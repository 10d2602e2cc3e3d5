"""The run API: many jobs submitted together, watched together, scored together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from bus import (
    BusUnavailableError,
    JobRecord,
    RunChunk,
    RunMember,
    RunRecord,
    is_valid_id,
    new_run_id,
    utc_now,
)
from bus import subjects as s
from gateway import metrics
from gateway.audit import audit_facts
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.consumers import last_per_subject
from gateway.event_stream import EventStreamResponse
from gateway.passk import DEFAULT_KS
from gateway.run_schemas import RunAccepted, RunCancelled, RunList, RunSubmission, RunView
from gateway.run_sse import run_event_stream
from gateway.run_status import RunLinks, run_links, run_summary, run_view
from gateway.run_submit import chunk_of, enqueue, prepare_jobs
from gateway.schemas import JobView
from gateway.security import (
    BusDep,
    Caller,
    SettingsDep,
    TokensDep,
    resume_position,
    stream_principal,
)
from gateway.validation import check_metadata
from gateway.views import job_links, job_view
from observability import current_trace_id

router = APIRouter(prefix="/v1/runs", tags=["runs"])

_MAX_K = 10_000
_RESULTS_BATCH = 64  # job lookups in flight while streaming results


def _ks(value: str | None) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_KS
    try:
        ks = tuple(int(part) for part in value.split(","))
    except ValueError:
        ks = ()
    if not ks or not all(1 <= k <= _MAX_K for k in ks):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"k must be comma-separated integers from 1 to {_MAX_K}, like 1,10,100; not {value!r}",
        )
    return ks


async def _owned_run(bus: GatewayBus, run_id: str, tenant: str) -> RunRecord:
    # Keys hold the tenant: another tenant's run is simply not found, like a missing one.
    valid = is_valid_id(run_id) and run_id.startswith("r-")
    found = await bus.runs.get(tenant, run_id) if valid else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} not found")
    return found[0]


def _accepted(links: RunLinks, record: RunRecord, chunk: RunChunk) -> RunAccepted:
    return RunAccepted(
        id=record.run_id,
        job_ids=[member.job_id for member in chunk.jobs],
        total_jobs=record.total_jobs,
        url=links.url,
        events_url=links.events_url,
        results_url=links.results_url,
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED)
async def submit_run(
    body: RunSubmission,
    request: Request,
    caller: Caller,
    bus: BusDep,
    settings: SettingsDep,
    tokens: TokensDep,
) -> RunAccepted:
    """Queue up to 10,000 jobs as one run; append more with `POST /v1/runs/{id}/jobs`."""
    check_metadata(body.metadata, settings)
    run_id = new_run_id()
    facts = audit_facts(request)
    facts.run_id, facts.jobs = run_id, len(body.jobs)
    jobs = prepare_jobs(body.jobs, run_id, caller.tenant, settings)
    await bus.check_room(caller.tenant, len(jobs.specs))
    record = RunRecord(
        run_id=run_id,
        tenant=caller.tenant,
        created_at=utc_now(),
        metadata=body.metadata,
        total_jobs=len(jobs.specs),
        chunks=1,
        trace_id=current_trace_id(),
        events_after_seq=await bus.events_last_seq(),
    )
    await bus.runs.create(record)
    chunk = chunk_of(0, jobs)
    try:
        await enqueue(bus, chunk, jobs)
        metrics.JOBS_SUBMITTED.labels("run").inc(len(chunk.jobs))
    except BusUnavailableError:
        await asyncio.shield(bus.runs.delete(caller.tenant, run_id))
        raise
    return _accepted(run_links(str(request.base_url), tokens, record), record, chunk)


@router.post("/{run_id}/jobs", status_code=status.HTTP_202_ACCEPTED)
async def append_jobs(
    run_id: str,
    body: RunSubmission,
    request: Request,
    caller: Caller,
    bus: BusDep,
    settings: SettingsDep,
    tokens: TokensDep,
) -> RunAccepted:
    """Add up to 10,000 more jobs to a run (its `metadata` is not changed)."""
    audit_facts(request).jobs = len(body.jobs)
    await _owned_run(bus, run_id, caller.tenant)
    jobs = prepare_jobs(body.jobs, run_id, caller.tenant, settings)
    await bus.check_room(caller.tenant, len(jobs.specs))
    record = await bus.runs.reserve_chunk(caller.tenant, run_id, len(jobs.specs))
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} not found")
    chunk = chunk_of(record.chunks - 1, jobs)
    try:
        await enqueue(bus, chunk, jobs)
        metrics.JOBS_SUBMITTED.labels("run").inc(len(chunk.jobs))
    except BusUnavailableError:
        await asyncio.shield(bus.runs.release_chunk(caller.tenant, run_id, len(chunk.jobs)))
        raise
    return _accepted(run_links(str(request.base_url), tokens, record), record, chunk)


@router.get("")
async def list_runs(
    request: Request,
    caller: Caller,
    bus: BusDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[str | None, Query(description="a run id: list runs older than it")] = None,
) -> RunList:
    """The caller's runs, newest first."""
    messages = await last_per_subject(
        bus.js,
        bus.new_inbox(),
        s.RUNS_BUCKET_STREAM,
        s.tenant_runs_subject(caller.tenant),
        headers_only=False,
    )
    records = [
        RunRecord.model_validate_json(msg.data)
        for msg in messages
        if msg.data and not (msg.headers or {}).get("KV-Operation")  # skip deleted runs
    ]
    records.sort(key=lambda record: record.run_id, reverse=True)  # ids sort by creation
    if before is not None:
        records = [record for record in records if record.run_id < before]
    page = records[:limit]
    base = str(request.base_url)
    next_url = None
    if len(records) > limit:
        next_url = f"{base.rstrip('/')}/v1/runs?limit={limit}&before={page[-1].run_id}"
    return RunList(runs=[run_summary(record, base) for record in page], next_url=next_url)


@router.get("/{run_id}")
async def get_run(
    run_id: str,
    request: Request,
    caller: Caller,
    bus: BusDep,
    tokens: TokensDep,
    k: Annotated[str | None, Query(description="pass@k for these k, e.g. 1,10,100")] = None,
) -> RunView:
    """Counts per status and verdict; pass@k over jobs carrying `metadata.task_id`."""
    ks = _ks(k)
    record = await _owned_run(bus, run_id, caller.tenant)
    return await run_view(bus, record, run_links(str(request.base_url), tokens, record), ks)


@router.post("/{run_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
async def cancel_run(run_id: str, caller: Caller, bus: BusDep) -> RunCancelled:
    """Cancel every job of the run: queued ones never start, running ones are killed."""
    record = await _owned_run(bus, run_id, caller.tenant)
    job_ids = [member.job_id for member in await bus.runs.members(record)]
    await bus.cancel(job_ids)
    return RunCancelled(id=run_id, jobs=len(job_ids))


@router.get("/{run_id}/events", response_model=None)
async def run_events(
    run_id: str,
    request: Request,
    bus: BusDep,
    settings: SettingsDep,
    tokens: TokensDep,
    authorization: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(description="the token from events_url")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> EventStreamResponse:
    """SSE: every job's `finished`, each followed by `progress`; ends after the last job."""
    caller = stream_principal(request, f"run:{run_id}", token, authorization)
    record = await _owned_run(bus, run_id, caller.tenant)
    after = resume_position(last_event_id, last_event_id_query)
    base = str(request.base_url)

    def finished_view(job: JobRecord, stored: StoredEvent) -> JobView:
        return job_view(job, stored, job_links(base, tokens, job))

    # Ours, as a job stream's: its frames skip the app's layers, and a stream that loses the
    # bus ends as a stream (see `gateway.event_stream`).
    return EventStreamResponse(
        metrics.counted("run", run_event_stream(bus, record, after, finished_view)),
        ping=int(settings.sse_ping_s),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/{run_id}/results", response_class=StreamingResponse)
async def run_results(
    run_id: str, request: Request, caller: Caller, bus: BusDep, tokens: TokensDep
) -> StreamingResponse:
    """Every job of the run as one JSON line (a job view), in submission order."""
    record = await _owned_run(bus, run_id, caller.tenant)
    members = await bus.runs.members(record)
    base = str(request.base_url)

    async def line(member: RunMember) -> bytes:
        job = await bus.record(member.job_id)
        if job is None:  # expired with the bucket's TTL
            return b""
        view = job_view(job, await bus.last_event(job), job_links(base, tokens, job))
        return view.model_dump_json(exclude={"events_url"}).encode() + b"\n"

    async def lines() -> AsyncIterator[bytes]:
        for start in range(0, len(members), _RESULTS_BATCH):
            batch = members[start : start + _RESULTS_BATCH]
            yield b"".join(await asyncio.gather(*(line(member) for member in batch)))

    return StreamingResponse(lines(), media_type="application/x-ndjson")
