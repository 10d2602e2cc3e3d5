"""What a sandbox is asked to run and what it reports back.

These models are the sandbox's own: `bus` has the wire models, and the worker maps one
onto the other, so that the sandbox never depends on NATS and the bus never on Linux.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Verdict(StrEnum):
    """How a run ended, as DESIGN.md defines it."""

    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    RUNTIME_ERROR = "runtime_error"
    COMPILATION_ERROR = "compilation_error"
    TIME_LIMIT_EXCEEDED = "time_limit_exceeded"
    MEMORY_LIMIT_EXCEEDED = "memory_limit_exceeded"
    OUTPUT_LIMIT_EXCEEDED = "output_limit_exceeded"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


class ExecLimits(BaseModel):
    """Hard limits for one run; every one is enforced by the backend, not by the job."""

    model_config = ConfigDict(frozen=True)

    wall_time_s: float = 5.0
    cpu_time_s: float = 5.0
    memory_mb: int = 256
    processes: int = 64
    output_bytes: int = 1_048_576  # stdout and stderr together
    disk_mb: int = 64  # size of the job's tmpfs work dir


class ExecSpec(BaseModel):
    """One program to run in one fresh sandbox."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    language: str
    code: str
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> content
    stdin: str = ""
    args: list[str] = Field(default_factory=list)
    limits: ExecLimits = Field(default_factory=ExecLimits)


Stream = Literal["stdout", "stderr"]


class OutputChunk(BaseModel):
    """A piece of output as the program produced it; `offset` counts bytes before it."""

    stream: Stream
    data: str
    offset: int


OutputSink = Callable[[OutputChunk], Awaitable[None]]


class ExecResult(BaseModel):
    """What happened. A failing program is data here, never an exception."""

    verdict: Verdict
    exit_code: int | None = None
    signal: str | None = None  # e.g. "SIGKILL", when the program was killed by one
    reason: str | None = None  # human words for a verdict other than accepted
    stdout: str = ""
    stderr: str = ""
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    memory_peak_mb: float = 0.0


class RuntimeInfo(BaseModel):
    """A language the backend can run, with the interpreter's version."""

    language: str
    version: str
