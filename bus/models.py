"""The messages on the bus. Gateway and workers share these; nothing else crosses as a dict.

All are JSON on the wire (`model_dump_json`), so `nats sub 'crucible.>'` shows them as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, model_validator


def utc_now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


class Verdict(StrEnum):
    """How a job ended (DESIGN.md, Verdicts)."""

    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    RUNTIME_ERROR = "runtime_error"
    COMPILATION_ERROR = "compilation_error"
    TIME_LIMIT_EXCEEDED = "time_limit_exceeded"
    MEMORY_LIMIT_EXCEEDED = "memory_limit_exceeded"
    OUTPUT_LIMIT_EXCEEDED = "output_limit_exceeded"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


class Status(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class Limits(BaseModel):
    """Per-job limits; the gateway refuses values above the operator's ceilings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_time_s: float = Field(5.0, gt=0)
    cpu_time_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(256, ge=16)
    processes: int = Field(64, ge=1)
    output_bytes: int = Field(1_048_576, ge=1)
    disk_mb: int = Field(64, ge=1)


# How stdout is compared with the expected output: `exact` byte for byte; `whitespace` as
# sequences of whitespace-separated tokens (the usual competitive-programming checker).
Compare = Literal["exact", "whitespace"]


class Case(BaseModel):
    """One test case of a competitive-programming job: an input and the output it must give."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stdin: str = ""
    expected_stdout: str


class JobSpec(BaseModel):
    """What a client asks to run (the body of `POST /v1/jobs`, an item of `POST /v1/runs`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str = Field(min_length=1, max_length=32)
    code: str
    files: dict[str, str] = Field(default_factory=dict)
    stdin: str = ""
    args: list[str] = Field(default_factory=list)
    expected_stdout: str | None = None
    compare: Compare = "exact"
    # Several cases: each runs in its own fresh sandbox with the job's limits; the job's
    # verdict is the first case's that is not `accepted`.
    tests: list[Case] | None = Field(None, min_length=1)
    # Stop at the first failing case (as judges do), or run them all for a per-case score.
    stop_on_failure: bool = True
    limits: Limits = Field(default_factory=Limits)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class JobMessage(BaseModel):
    """A job on `crucible.jobs.<tenant>`: the spec plus who asked and when."""

    job_id: str
    run_id: str
    tenant: str
    spec: JobSpec
    submitted_at: datetime


class JobRecord(BaseModel):
    """The gateway's record of a job (KV `jobs`): enough to authorize and find its events."""

    job_id: str
    run_id: str
    tenant: str
    language: str
    submitted_at: datetime
    trace_id: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class _Outcome(BaseModel):
    """How a program ended: shared by a whole job and each of its test cases."""

    verdict: Verdict
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    stdout: str = ""
    stderr: str = ""
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    memory_peak_mb: float = 0.0


class CaseResult(_Outcome):
    """The outcome of one test case; its output is cut to a preview to keep events small."""

    index: int = Field(ge=0)


class JobResult(_Outcome):
    """The outcome of one attempt, as the worker saw it.

    With `tests`, the top-level fields describe the case that decided the verdict (the first
    that failed, else the last), times and memory are totals and peaks over the cases, and
    `tests` lists every case that ran, in order.
    """

    started_at: datetime | None = None
    finished_at: datetime
    tests: list[CaseResult] = Field(default_factory=list)


class _EventBase(BaseModel):
    """Every event names its job, attempt and position, so consumers can drop duplicates."""

    job_id: str
    run_id: str
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    time: datetime = Field(default_factory=utc_now)

    @property
    def dedup_key(self) -> str:
        """Unique per event; used as `Nats-Msg-Id` so JetStream drops re-publishes."""
        return f"{self.job_id}.{self.attempt}.{self.seq}"


class StartedEvent(_EventBase):
    type: Literal["started"] = "started"
    worker: str


class OutputEvent(_EventBase):
    type: Literal["stdout", "stderr"]
    data: str
    offset: int = Field(ge=0)  # bytes of this stream before this chunk


class FinishedEvent(_EventBase):
    type: Literal["finished"] = "finished"
    worker: str
    result: JobResult


JobEvent = Annotated[StartedEvent | OutputEvent | FinishedEvent, Field(discriminator="type")]
JOB_EVENT = TypeAdapter[JobEvent](JobEvent)


class CancelRequest(BaseModel):
    """On `crucible.cancel.<job>` for running jobs, and in KV `cancels` for queued ones.

    Nothing else passes for one: a consumer may replay any stored message onto a subject
    (nats-server does not check where it delivers), and many name a job."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    requested_at: datetime = Field(default_factory=utc_now)


class RuntimeVersion(BaseModel):
    """A language a worker can run."""

    language: str
    version: str


class WorkerHeartbeat(BaseModel):
    """A worker's periodic announcement on `crucible.workers.<worker>`."""

    worker_id: str
    hostname: str
    pid: int
    backend: str
    runtimes: list[RuntimeVersion]
    capacity: int
    busy: int
    sent_at: datetime = Field(default_factory=utc_now)


class ServiceCredentials(BaseModel):
    """One service's NATS identity, as `crucible creds` writes it (file mode 0600): a user and
    password, an nkey seed, or a client certificate (paths relative to the file's directory).
    """

    model_config = ConfigDict(extra="forbid")

    user: str | None = None
    password: str | None = None
    nkey_seed: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @model_validator(mode="after")
    def _one_identity(self) -> ServiceCredentials:
        forms = [
            self.user is not None and self.password is not None,
            self.nkey_seed is not None,
            None not in (self.tls_cert, self.tls_key, self.tls_ca),
        ]
        if sum(forms) != 1:
            raise ValueError(
                "credentials need exactly one of: user and password, nkey_seed, "
                "or tls_cert, tls_key and tls_ca"
            )
        return self

    def relative_to(self, directory: Path) -> ServiceCredentials:
        """The same identity with certificate paths resolved against `directory`."""
        return self.model_copy(
            update={
                name: directory / path
                for name in ("tls_cert", "tls_key", "tls_ca")
                if (path := getattr(self, name)) is not None
            }
        )
