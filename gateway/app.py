"""The gateway: jobs and runs in over HTTP, onto NATS; events back out over SSE."""

import asyncio
import gc
import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from bus import (
    BusUnavailableError,
    JobMessage,
    JobRecord,
    JobSpec,
    NatsSettings,
    Status,
    is_valid_id,
    new_job_id,
    new_run_id,
    utc_now,
)
from bus import subjects as s
from gateway import metrics
from gateway.audit import AuditMiddleware, audit_facts
from gateway.auth import StreamTokens
from gateway.body_limit import BodyLimitMiddleware
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.console import install_console
from gateway.errors import ALREADY_FINISHED, ERROR_RESPONSES, install_error_handlers
from gateway.event_feed import PendingWatch
from gateway.event_stream import (
    EVENTS_URL_HEADER,
    SUBMISSION_STREAM,
    DirectWrites,
    EventStreamResponse,
    install_server_send,
    wants_event_stream,
)
from gateway.idempotency import MAX_KEY_CHARS, Claim
from gateway.keys_store import ApiKeysStore
from gateway.rate_limit import RateLimiter
from gateway.runs_api import router as runs_router
from gateway.schemas import JobAccepted, JobView, Readiness, RuntimesView, RuntimeView
from gateway.security import BusDep, Caller, resume_position, stream_principal
from gateway.settings import GatewaySettings
from gateway.sse import job_event_stream
from gateway.validation import check_spec, with_default_limits
from gateway.views import JobLinks, job_links, job_view
from gateway.workers_registry import WorkerRegistry
from observability import current_trace_id, instrument_app

_GC_YOUNG_ALLOCATIONS = 50_000  # a 2,000-job run allocates ~44,000 tracked objects


def create_app(
    settings: GatewaySettings | None = None, nats: NatsSettings | None = None
) -> FastAPI:
    """The ASGI app; it connects to NATS when it starts and drains when it stops."""
    settings = settings or GatewaySettings()
    nats = nats or NatsSettings()
    keys = ApiKeysStore(settings.api_keys_file)
    signing_key = (
        settings.signing_key.get_secret_value().encode()
        if settings.signing_key
        else secrets.token_bytes(32)
    )
    tokens = StreamTokens(signing_key, settings.event_token_ttl_s)
    registry = WorkerRegistry(settings.worker_stale_after_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys.load()  # fail start-up, not the first request, on a missing or broken keys file
        app.state.bus = await GatewayBus.start(
            nats, settings.streams, registry, settings.event_feed_linger_s
        )
        refreshing = asyncio.create_task(metrics.refresh_forever(app.state.bus))
        # What start-up made lives as long as the gateway: the collector need not walk it
        # again on every full pass (a third of the CPU of accepting a large run).
        gc.freeze()
        # A run's jobs are tens of thousands of objects (specs, spans, messages) alive until
        # its answer: collecting every 700 allocations walked each of them twice or more,
        # ~60 passes and 10-20 ms of CPU per 2,000 jobs. Freed by refcount when the request
        # ends, most of them are never walked at all between passes this far apart.
        gc.set_threshold(_GC_YOUNG_ALLOCATIONS, *gc.get_threshold()[1:])
        try:
            yield
        finally:
            refreshing.cancel()
            await app.state.bus.close()

    app = FastAPI(title="Crucible", version="1", lifespan=lifespan, responses=ERROR_RESPONSES)
    install_error_handlers(app)
    app.state.keys = keys
    app.state.tokens = tokens
    app.state.settings = settings
    app.state.limiter = RateLimiter(settings.rate_limit)
    app.state.auth_failures = RateLimiter(settings.auth_failures)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        # A run carries up to 10,000 programs in one body.
        larger_limits={"/v1/runs": settings.max_run_body_bytes},
    )
    app.add_middleware(AuditMiddleware)  # outermost of ours: sees the body limit's 413s too
    instrument_app(app)
    install_server_send(app)  # after the tracing layer: outside it
    app.include_router(runs_router, responses=ERROR_RESPONSES)
    app.include_router(metrics.router)
    install_console(app)

    def links(request: Request, record: JobRecord) -> JobLinks:
        return job_links(str(request.base_url), tokens, record)

    async def owned_job(bus: GatewayBus, job_id: str, tenant: str) -> JobRecord:
        # Another tenant's job answers exactly like a job that does not exist.
        record = await bus.record(job_id) if is_valid_id(job_id) else None
        if record is None or record.tenant != tenant:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
        return record

    async def repeated(
        request: Request, bus: GatewayBus, tenant: str, claim: Claim, held: Claim
    ) -> JobRecord:
        """The job a repeated Idempotency-Key names, or 422 if the body differs."""
        if held.request_sha256 != claim.request_sha256:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "this Idempotency-Key was used for a different request; use a new key",
            )
        return await owned_job(bus, held.job_id, tenant)

    def accepted(record: JobRecord, job_status: Status, request: Request) -> JobAccepted:
        found = links(request, record)
        return JobAccepted(
            id=record.job_id,
            run_id=record.run_id,
            status=job_status,
            url=found.url,
            events_url=found.events_url,
        )

    def event_stream(
        request: Request,
        bus: GatewayBus,
        record: JobRecord,
        after: int | None,
        watched: PendingWatch | None = None,
        submission: bool = False,
    ) -> EventStreamResponse:
        """The job's SSE stream after `after` (all of it when None); `watched`, a watch of
        the job made before it was enqueued, which its tail may take."""
        stream_links = links(request, record)

        def finished_view(stored: StoredEvent) -> JobView:
            return job_view(record, stored, stream_links)

        direct = DirectWrites()
        events = job_event_stream(bus, record, after, finished_view, direct, watched)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if submission:  # the answer to a submission: where the job lives
            headers |= {"Location": stream_links.url, EVENTS_URL_HEADER: stream_links.events_url}
        return EventStreamResponse(
            metrics.counted("job", events),
            direct=direct,
            ping=int(settings.sse_ping_s),
            headers=headers,
            # However it ends, even if its client left before it began.
            on_close=None if watched is None else watched.close,
        )

    @app.post(
        "/v1/jobs",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=JobAccepted,
        responses=SUBMISSION_STREAM,
    )
    async def submit_job(
        spec: JobSpec,
        request: Request,
        caller: Caller,
        bus: BusDep,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", max_length=MAX_KEY_CHARS)
        ] = None,
    ) -> JobAccepted | EventStreamResponse:
        """Queue one job; watch it at `events_url`. A repeated Idempotency-Key is one job.

        With `Accept: text/event-stream`, the answer is the job's event stream itself (200),
        as `events_url` would give it, from `queued` to `finished`; `Location` and
        `Crucible-Events-URL` name the job and the stream to resume with `Last-Event-ID`.
        """
        check_spec(spec, settings)
        spec = with_default_limits(spec, settings)
        streamed = wants_event_stream(request.headers.get("accept"))
        job_id = new_job_id()
        if idempotency_key is not None:
            claim = Claim(
                job_id=job_id,
                request_sha256=hashlib.sha256(spec.model_dump_json().encode()).hexdigest(),
            )
            held = await bus.idempotency.claim(caller.tenant, idempotency_key, claim)
            if held is not None:
                audit_facts(request).job_id = held.job_id
                first = await repeated(request, bus, caller.tenant, claim, held)
                if streamed:
                    return event_stream(request, bus, first, None, submission=True)
                view = job_view(first, await bus.last_event(first), links(request, first))
                return accepted(first, view.status, request)
        now = utc_now()
        record = JobRecord(
            job_id=job_id,
            run_id=new_run_id(),
            tenant=caller.tenant,
            language=spec.language,
            submitted_at=now,
            trace_id=current_trace_id(),
            metadata=spec.metadata,
        )
        facts = audit_facts(request)
        facts.job_id, facts.run_id = record.job_id, record.run_id
        message = JobMessage(
            job_id=record.job_id,
            run_id=record.run_id,
            tenant=record.tenant,
            spec=spec,
            submitted_at=now,
        )
        watched: PendingWatch | None = None
        try:
            if streamed:
                # Watched before it is enqueued: every event of the job comes to this watch,
                # so its stream reads nothing back from JetStream.
                subject = s.events_subject(record.run_id, record.job_id)
                watched = PendingWatch(bus.feed, await bus.feed.open(subject))
            else:
                bus.recent.watch(record)  # the same, for the stream that mostly comes next
            await bus.submit(record, message)
            metrics.JOBS_SUBMITTED.labels("job").inc()
        except BaseException as exc:
            bus.recent.forget(record.job_id)
            if watched is not None:
                watched.close()
            if idempotency_key is not None and isinstance(exc, BusUnavailableError):
                await bus.idempotency.release(caller.tenant, idempotency_key)
            raise
        if watched is not None:
            return event_stream(request, bus, record, None, watched, submission=True)
        return accepted(record, Status.QUEUED, request)

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, request: Request, caller: Caller, bus: BusDep) -> JobView:
        """The job's status, and its result once finished."""
        record = await owned_job(bus, job_id, caller.tenant)
        return job_view(record, await bus.last_event(record), links(request, record))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        status_code=status.HTTP_202_ACCEPTED,
        responses=ALREADY_FINISHED,
    )
    async def cancel_job(job_id: str, request: Request, caller: Caller, bus: BusDep) -> JobView:
        """Cancel a queued or running job; it finishes as `cancelled` (409 once finished)."""
        record = await owned_job(bus, job_id, caller.tenant)
        view = job_view(record, await bus.last_event(record), links(request, record))
        if view.status is Status.FINISHED:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"job {job_id} already finished ({view.verdict})"
            )
        await bus.cancel([job_id])
        return view

    @app.get("/v1/jobs/{job_id}/events", response_model=None)
    async def job_events(
        job_id: str,
        request: Request,
        bus: BusDep,
        authorization: Annotated[str | None, Header()] = None,
        token: Annotated[str | None, Query(description="the token from events_url")] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        last_event_id_query: Annotated[str | None, Query(alias="last_event_id")] = None,
    ) -> EventStreamResponse:
        """SSE: queued, started, stdout/stderr chunks, finished. Resumable."""
        caller = stream_principal(request, f"job:{job_id}", token, authorization)
        record = await owned_job(bus, job_id, caller.tenant)
        after = resume_position(last_event_id, last_event_id_query)
        return event_stream(request, bus, record, after, bus.recent.take(job_id))

    @app.get("/v1/runtimes")
    async def runtimes(caller: Caller, bus: BusDep) -> RuntimesView:
        """Languages the live workers can run, with interpreter versions."""
        versions: dict[str, set[str]] = {}
        workers: dict[str, int] = {}
        for heartbeat in bus.registry.live():
            for runtime in heartbeat.runtimes:
                versions.setdefault(runtime.language, set()).add(runtime.version)
                workers[runtime.language] = workers.get(runtime.language, 0) + 1
        return RuntimesView(
            runtimes=[
                RuntimeView(language=lang, versions=sorted(v), workers=workers[lang])
                for lang, v in sorted(versions.items())
            ]
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness)
    async def readyz(bus: BusDep) -> JSONResponse:
        """Readiness: NATS connected, streams present, at least one live worker."""
        nats_ok = bus.connected
        streams_ok = nats_ok and await bus.streams_ready()
        workers = len(bus.registry.live())
        ready = nats_ok and streams_ok and workers > 0
        missing = [
            name
            for name, ok in (("nats", nats_ok), ("streams", streams_ok), ("workers", workers > 0))
            if not ok
        ]
        body = Readiness(
            ready=ready,
            nats=nats_ok,
            streams=streams_ok,
            workers=workers,
            detail=f"not ready: {', '.join(missing)}" if missing else None,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    return app
