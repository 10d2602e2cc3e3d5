"""What the run API takes and answers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from bus import JobSpec, Status

MAX_JOBS_PER_REQUEST = 10_000


class RunSubmission(BaseModel):
    """The body of `POST /v1/runs` and `POST /v1/runs/{id}/jobs`."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSpec] = Field(min_length=1, max_length=MAX_JOBS_PER_REQUEST)
    # Describes the whole run (model, dataset, ...); ignored when appending.
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class RunAccepted(BaseModel):
    """`202` for `POST /v1/runs` (and for an append: `job_ids` are the new jobs)."""

    id: str
    job_ids: list[str]
    total_jobs: int
    url: str
    events_url: str
    results_url: str


class StatusCounts(BaseModel):
    queued: int = 0
    running: int = 0
    finished: int = 0


class RunView(BaseModel):
    """`GET /v1/runs/{id}`: where the run's jobs are, their verdicts, and pass@k.

    pass@k is over the finished jobs that carry `metadata.task_id`, grouped by it; it is
    final once `status` is `finished`. A k is present when every task has k such samples.
    """

    id: str
    status: Status
    created_at: datetime
    metadata: dict[str, JsonValue]
    total_jobs: int
    counts: StatusCounts
    verdicts: dict[str, int]
    tasks: int  # distinct task ids among the finished jobs
    pass_at_k: dict[str, float]
    trace_id: str | None = None
    url: str
    events_url: str
    results_url: str


class RunProgress(BaseModel):
    """Data of the run stream's `progress` event."""

    done: int
    total: int
    verdicts: dict[str, int]


class RunSummary(BaseModel):
    """One run in `GET /v1/runs`."""

    id: str
    created_at: datetime
    metadata: dict[str, JsonValue]
    total_jobs: int
    url: str


class RunList(BaseModel):
    """`GET /v1/runs`: newest first; `next_url` fetches the page after this one."""

    runs: list[RunSummary]
    next_url: str | None = None


class RunCancelled(BaseModel):
    """`202` for `POST /v1/runs/{id}/cancel`: how many jobs were asked to stop."""

    id: str
    jobs: int
