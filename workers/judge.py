"""From what the sandbox saw to the job's result: the verdict, with expected output applied."""

from __future__ import annotations

from datetime import datetime

from bus import JobMessage, JobResult, JobSpec, Verdict, utc_now
from sandbox import ExecLimits, ExecResult, ExecSpec


def exec_spec(job: JobMessage) -> ExecSpec:
    """The sandbox's view of a job: the program, its inputs and its limits."""
    spec = job.spec
    return ExecSpec(
        job_id=job.job_id,
        language=spec.language,
        code=spec.code,
        files=spec.files,
        stdin=spec.stdin,
        args=spec.args,
        limits=ExecLimits(**spec.limits.model_dump()),
    )


def judge(spec: JobSpec, run: ExecResult, started_at: datetime) -> JobResult:
    """A clean exit is `accepted` only when stdout matches `expected_stdout`, if one is given."""
    verdict = Verdict(run.verdict.value)
    reason = run.reason
    if (
        verdict is Verdict.ACCEPTED
        and spec.expected_stdout is not None
        and run.stdout != spec.expected_stdout
    ):
        verdict = Verdict.WRONG_ANSWER
        reason = "stdout differs from expected_stdout"
    return JobResult(
        verdict=verdict,
        exit_code=run.exit_code,
        signal=run.signal,
        reason=reason,
        stdout=run.stdout,
        stderr=run.stderr,
        wall_time_s=run.wall_time_s,
        cpu_time_s=run.cpu_time_s,
        memory_peak_mb=run.memory_peak_mb,
        started_at=started_at,
        finished_at=utc_now(),
    )


def platform_failure(reason: str, started_at: datetime | None = None) -> JobResult:
    """`internal_error`: the platform failed, never the code."""
    return JobResult(
        verdict=Verdict.INTERNAL_ERROR, reason=reason, started_at=started_at, finished_at=utc_now()
    )
