"""Run records: a batch of jobs submitted together, kept in the `runs` bucket.

A run's job list is stored in chunks, one per submission (`POST /v1/runs` and each
`POST /v1/runs/{id}/jobs`), so that a run of 100,000 jobs is never one huge KV value.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, JsonValue

from bus.ids import paged_job_id
from bus.models import JobRecord


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


class PagedRecord(BaseModel):
    """What a record page keeps of one job beyond what all its jobs share."""

    language: str
    trace_id: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class RecordPage(BaseModel):
    """The records of consecutive jobs of one submission, as one value in the `jobs` bucket
    under the page's id: one write per page instead of one per job. The job at `jobs[i]` has
    the id `paged_job_id(page_id, i)`."""

    run_id: str
    tenant: str
    submitted_at: datetime
    jobs: list[PagedRecord]

    def record(self, page_id: str, index: int) -> JobRecord | None:
        """The record of the job at `index`, or None when the page has no such job."""
        if not 0 <= index < len(self.jobs):
            return None
        job = self.jobs[index]
        return JobRecord(
            job_id=paged_job_id(page_id, index),
            run_id=self.run_id,
            tenant=self.tenant,
            language=job.language,
            submitted_at=self.submitted_at,
            trace_id=job.trace_id,
            metadata=job.metadata,
        )
