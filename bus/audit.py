"""The audit record: one per submission, cancel, authentication failure and refusal.

Stored on `crucible.audit.<tenant>` in the AUDIT stream; `crucible audit tail` prints them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from bus.models import utc_now


class AuditAction(StrEnum):
    SUBMIT_JOB = "submit_job"
    SUBMIT_RUN = "submit_run"
    APPEND_JOBS = "append_jobs"
    CANCEL_JOB = "cancel_job"
    CANCEL_RUN = "cancel_run"
    AUTH_FAILURE = "auth_failure"
    RATE_LIMITED = "rate_limited"


class AuditOutcome(StrEnum):
    ACCEPTED = "accepted"  # 2xx
    REFUSED = "refused"  # 4xx: the caller's request was turned down
    FAILED = "failed"  # 5xx: ours (the bus was down); nothing was stored


class AuditRecord(BaseModel):
    """Who asked for what, from where, and what the gateway answered."""

    at: datetime = Field(default_factory=utc_now)
    action: AuditAction
    outcome: AuditOutcome
    status: int  # the HTTP status returned
    method: str
    path: str
    tenant: str | None = None  # None: no valid key was presented
    key_id: str | None = None
    client: str | None = None  # the caller's address (as the edge proxy reported it)
    job_id: str | None = None
    run_id: str | None = None
    jobs: int | None = None  # how many jobs a run submission held
    trace_id: str | None = None
    detail: str | None = None  # why it was refused or failed
