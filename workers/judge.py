"""From what the sandbox saw to the job's result: verdicts, with expected output applied."""

from __future__ import annotations

from datetime import datetime

from bus import CaseResult, Compare, JobMessage, JobResult, JobSpec, Verdict, utc_now
from sandbox import ExecLimits, ExecResult, ExecSpec

# A case's output in the result is a preview: a job of 1,000 cases must still fit one event.
CASE_OUTPUT_PREVIEW_CHARS = 4096


def exec_spec(job: JobMessage, stdin: str | None = None) -> ExecSpec:
    """The sandbox's view of a job (or of one of its cases): program, inputs, limits."""
    spec = job.spec
    return ExecSpec(
        job_id=job.job_id,
        language=spec.language,
        code=spec.code,
        files=spec.files,
        stdin=spec.stdin if stdin is None else stdin,
        args=spec.args,
        limits=ExecLimits(**spec.limits.model_dump()),
    )


def outputs_match(actual: str, expected: str, compare: Compare) -> bool:
    """`exact`: byte for byte. `whitespace`: the same tokens, however spaced or broken."""
    if compare == "whitespace":
        return actual.split() == expected.split()
    return actual == expected


def _verdict(run: ExecResult, expected: str | None, compare: Compare) -> tuple[Verdict, str | None]:
    """A clean exit is `accepted` only when stdout matches `expected`, if one is given."""
    verdict = Verdict(run.verdict.value)
    if (
        verdict is Verdict.ACCEPTED
        and expected is not None
        and not outputs_match(run.stdout, expected, compare)
    ):
        how = "ignoring whitespace" if compare == "whitespace" else "exactly"
        return Verdict.WRONG_ANSWER, f"stdout differs from the expected output ({how})"
    return verdict, run.reason


def judge(spec: JobSpec, run: ExecResult, started_at: datetime) -> JobResult:
    """The result of a single-run job."""
    verdict, reason = _verdict(run, spec.expected_stdout, spec.compare)
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


def judge_case(index: int, run: ExecResult, expected: str, compare: Compare) -> CaseResult:
    """The verdict of one test case."""
    verdict, reason = _verdict(run, expected, compare)
    return CaseResult(
        index=index,
        verdict=verdict,
        exit_code=run.exit_code,
        signal=run.signal,
        reason=reason,
        stdout=run.stdout[:CASE_OUTPUT_PREVIEW_CHARS],
        stderr=run.stderr[:CASE_OUTPUT_PREVIEW_CHARS],
        wall_time_s=run.wall_time_s,
        cpu_time_s=run.cpu_time_s,
        memory_peak_mb=run.memory_peak_mb,
    )


def judge_cases(
    cases: list[CaseResult], deciding_run: ExecResult, started_at: datetime
) -> JobResult:
    """A multi-case job: the first case not accepted decides; `deciding_run` is its run."""
    deciding = next((c for c in cases if c.verdict is not Verdict.ACCEPTED), cases[-1])
    reason = None
    if deciding.verdict is not Verdict.ACCEPTED:
        reason = f"case {deciding.index}: {deciding.reason or deciding.verdict.value}"
    return JobResult(
        verdict=deciding.verdict,
        exit_code=deciding.exit_code,
        signal=deciding.signal,
        reason=reason,
        stdout=deciding_run.stdout,
        stderr=deciding_run.stderr,
        wall_time_s=sum(c.wall_time_s for c in cases),
        cpu_time_s=sum(c.cpu_time_s for c in cases),
        memory_peak_mb=max(c.memory_peak_mb for c in cases),
        started_at=started_at,
        finished_at=utc_now(),
        tests=cases,
    )


def platform_failure(reason: str, started_at: datetime | None = None) -> JobResult:
    """`internal_error`: the platform failed, never the code."""
    return JobResult(
        verdict=Verdict.INTERNAL_ERROR, reason=reason, started_at=started_at, finished_at=utc_now()
    )


def cancelled(reason: str, started_at: datetime | None = None) -> JobResult:
    """`cancelled`: a client asked for it; no verdict of the program's own."""
    return JobResult(
        verdict=Verdict.CANCELLED, reason=reason, started_at=started_at, finished_at=utc_now()
    )
