"""Run records: a batch of jobs submitted together, kept in the `runs` bucket.

A run's job list is stored in chunks, one per submission (`POST /v1/runs` and each
`POST /v1/runs/{id}/jobs`), so that a run of 100,000 jobs is never one huge KV value.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, JsonValue


class RunRecord(BaseModel):
    """Who owns a run, when it began, and how many jobs and chunks it has so far."""

    run_id: str
    tenant: str
    created_at: datetime
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    total_jobs: int = Field(0, ge=0)
    chunks: int = Field(0, ge=0)
    trace_id: str | None = None
    # The EVENTS stream's last position when the run was created: its jobs' events all come
    # after it, so reading them never scans the stream's older history.
    events_after_seq: int = Field(0, ge=0)


class RunMember(BaseModel):
    """One job of a run; `task_id` (from the job's `metadata.task_id`) groups it for pass@k."""

    job_id: str
    task_id: str | None = None


class RunChunk(BaseModel):
    """The jobs of one submission to a run, in the order they were submitted."""

    run_id: str
    index: int = Field(ge=0)
    jobs: list[RunMember]
