"""What the HTTP API answers (requests are `bus.JobSpec`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, JsonValue

from bus import CaseResult, Status, Verdict


class JobAccepted(BaseModel):
    """`202` for `POST /v1/jobs`."""

    id: str
    run_id: str
    status: Status
    url: str
    events_url: str


class Timings(BaseModel):
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    wall_time_s: float | None = None
    cpu_time_s: float | None = None


class JobView(BaseModel):
    """`GET /v1/jobs/{id}`, and the data of the SSE `finished` event."""

    id: str
    run_id: str
    status: Status
    language: str
    verdict: Verdict | None = None
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    memory_peak_mb: float | None = None
    tests: list[CaseResult] | None = None  # per case, for a job with `tests`
    timings: Timings
    attempts: int = 0
    worker: str | None = None
    trace_id: str | None = None
    metadata: dict[str, JsonValue]
    url: str
    events_url: str | None = None  # left out where a token would go stale (SSE, results)


class QueuedData(BaseModel):
    """Data of the SSE `queued` event."""

    job_id: str
    run_id: str
    queued_at: datetime


class RuntimeView(BaseModel):
    language: str
    versions: list[str]
    workers: int


class RuntimesView(BaseModel):
    """`GET /v1/runtimes`: what the live workers can run."""

    runtimes: list[RuntimeView]


class Readiness(BaseModel):
    """`GET /readyz`."""

    ready: bool
    nats: bool
    streams: bool
    workers: int
    detail: str | None = None
