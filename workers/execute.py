"""Running a job's program in the sandbox: once, or once per test case, each in a fresh one."""

from __future__ import annotations

import time
from datetime import datetime

from opentelemetry import trace

from bus import CaseResult, JobMessage, JobResult, Verdict
from observability.tracing import start_as_current_span
from sandbox import ExecResult, ExecSpec, OutputChunk, OutputSink, Sandbox
from workers import metrics
from workers.judge import exec_spec, judge, judge_case, judge_cases

tracer = trace.get_tracer(__name__)


async def _run(
    sandbox: Sandbox, job: JobMessage, spec: ExecSpec, on_output: OutputSink, case: int | None
) -> ExecResult:
    attributes: dict[str, str | int | float] = {
        "crucible.sandbox.backend": sandbox.name,
        "crucible.runtime": job.spec.language,
        **{f"crucible.limits.{k}": v for k, v in job.spec.limits.model_dump().items()},
    }
    if case is not None:
        attributes["crucible.case"] = case
    with start_as_current_span(tracer, "sandbox.run", attributes=attributes) as span:
        output_seen = False

        async def observed(chunk: OutputChunk) -> None:
            nonlocal output_seen
            if not output_seen:
                output_seen = True
                span.add_event("first output byte", {"crucible.stream": chunk.stream})
            await on_output(chunk)

        began = time.monotonic()
        run = await sandbox.run(spec, observed)
        overhead = time.monotonic() - began - run.wall_time_s
        metrics.sandbox_overhead(sandbox.name).observe(max(overhead, 0.0))
        span.set_attributes(
            {
                "crucible.verdict": run.verdict.value,
                "crucible.exit_code": -1 if run.exit_code is None else run.exit_code,
                "crucible.memory_peak_mb": run.memory_peak_mb,
                "crucible.wall_time_s": run.wall_time_s,
                "crucible.cpu_time_s": run.cpu_time_s,
            }
        )
    return run


class _ContinuedOutput:
    """Shifts each case's output offsets past the cases before it, so that the job's
    stdout and stderr stay single byte streams with increasing offsets."""

    def __init__(self, sink: OutputSink) -> None:
        self._sink = sink
        self._base = {"stdout": 0, "stderr": 0}
        self._end = dict(self._base)

    async def __call__(self, chunk: OutputChunk) -> None:
        offset = self._base[chunk.stream] + chunk.offset
        self._end[chunk.stream] = max(self._end[chunk.stream], offset + len(chunk.data.encode()))
        await self._sink(chunk.model_copy(update={"offset": offset}))

    def next_case(self) -> None:
        self._base = dict(self._end)


async def execute(
    sandbox: Sandbox, job: JobMessage, on_output: OutputSink, started_at: datetime
) -> JobResult:
    """The job's result; a failing program is a verdict, only a broken platform raises."""
    spec = job.spec
    if spec.tests is None:
        run = await _run(sandbox, job, exec_spec(job), on_output, None)
        return judge(spec, run, started_at)
    output = _ContinuedOutput(on_output)
    cases: list[CaseResult] = []
    deciding: ExecResult | None = None
    for index, case in enumerate(spec.tests):
        run = await _run(sandbox, job, exec_spec(job, stdin=case.stdin), output, index)
        output.next_case()
        result = judge_case(index, run, case.expected_stdout, spec.compare)
        cases.append(result)
        if result.verdict is not Verdict.ACCEPTED and deciding is None:
            deciding = run
            if spec.stop_on_failure:
                break
    return judge_cases(cases, deciding or run, started_at)
