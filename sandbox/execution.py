"""Running one sandboxed command to its end: limits enforced from outside, then a verdict."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

from sandbox.cgroups import JobCgroup
from sandbox.models import ExecLimits, ExecResult, OutputSink, Verdict
from sandbox.output import OutputCollector

_CPU_POLL_S = 0.05
_DRAIN_TIMEOUT_S = 5.0
SETUP_FAILED = 125  # our entry shell could not join the cgroup or set rlimits
_BWRAP_FAILED = 1  # bwrap's own status when it could not build the sandbox
_SIGNAL_BASE = 128  # bwrap reports a program killed by signal N as status 128 + N


@dataclass(frozen=True)
class Command:
    argv: Sequence[str]
    env: Mapping[str, str]
    pass_fds: Sequence[int]


async def _watch_cpu(cgroup: JobCgroup, limit_s: float) -> None:
    # RLIMIT_CPU caps each process; this caps the job's processes together.
    while cgroup.cpu_time_s() < limit_s:  # noqa: ASYNC110 - polling a kernel counter
        await asyncio.sleep(_CPU_POLL_S)


async def _feed(writer: asyncio.StreamWriter, data: str) -> None:
    # A program that never reads stdin, or exits early, must not fail the run.
    with suppress(BrokenPipeError, ConnectionResetError):
        if data:
            writer.write(data.encode())
            await writer.drain()
        writer.close()
        await writer.wait_closed()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


async def execute(
    command: Command, stdin: str, limits: ExecLimits, cgroup: JobCgroup, on_output: OutputSink
) -> ExecResult:
    """Run `command` (which joins `cgroup` first), stream its output, judge how it ended."""
    process = await asyncio.create_subprocess_exec(
        *command.argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(command.env),
        cwd="/",  # bwrap's cwd shows in the sandbox (/proc/1/environ's PWD): reveal nothing
        pass_fds=tuple(command.pass_fds),
        start_new_session=True,
    )
    started = time.monotonic()
    assert process.stdin and process.stdout and process.stderr
    output = OutputCollector(on_output, limits.output_bytes)
    readers = [
        asyncio.create_task(output.read("stdout", process.stdout)),
        asyncio.create_task(output.read("stderr", process.stderr)),
    ]
    exited = asyncio.create_task(process.wait())
    overflow = asyncio.create_task(output.overflowed.wait())
    cpu = asyncio.create_task(_watch_cpu(cgroup, limits.cpu_time_s))
    helpers = [asyncio.create_task(_feed(process.stdin, stdin)), overflow, cpu, exited]
    try:
        # The wall clock is enforced from out here: a job that stops itself (SIGSTOP) or
        # ignores SIGTERM still ends, because the whole cgroup is killed.
        done, _ = await asyncio.wait(
            {exited, overflow, cpu},
            timeout=limits.wall_time_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        await cgroup.kill()  # everything the job started dies now, daemons included
        await process.wait()
        await asyncio.wait_for(asyncio.gather(*readers), _DRAIN_TIMEOUT_S)
    finally:
        for task in (*helpers, *readers):
            task.cancel()
        if process.returncode is None:
            await cgroup.kill()
            await process.wait()
    return _result(
        returncode=process.returncode,
        wall_exceeded=not done,
        cpu_exceeded=cpu in done or cgroup.cpu_time_s() >= limits.cpu_time_s,
        output=output,
        cgroup=cgroup,
        wall_time_s=time.monotonic() - started,
    )


def _result(
    returncode: int | None,
    wall_exceeded: bool,
    cpu_exceeded: bool,
    output: OutputCollector,
    cgroup: JobCgroup,
    wall_time_s: float,
) -> ExecResult:
    stdout, stderr = output.text("stdout"), output.text("stderr")
    measured = ExecResult(
        verdict=Verdict.ACCEPTED,
        stdout=stdout,
        stderr=stderr,
        wall_time_s=round(wall_time_s, 4),
        cpu_time_s=round(cgroup.cpu_time_s(), 4),
        memory_peak_mb=round(cgroup.memory_peak_mb(), 2),
    )
    code = returncode if returncode is not None else -signal.SIGKILL
    signal_number = code - _SIGNAL_BASE if code > _SIGNAL_BASE else -code if code < 0 else None
    signal_name = _signal_name(signal_number) if signal_number else None

    def result(verdict: Verdict, reason: str | None = None) -> ExecResult:
        exit_code = None if signal_name else code
        return measured.model_copy(
            update={
                "verdict": verdict,
                "exit_code": exit_code,
                "signal": signal_name,
                "reason": reason,
            }
        )

    if output.overflowed.is_set():
        return result(Verdict.OUTPUT_LIMIT_EXCEEDED, "output limit exceeded")
    if cpu_exceeded or signal_number == signal.SIGXCPU:
        return result(Verdict.TIME_LIMIT_EXCEEDED, "CPU time limit exceeded")
    if wall_exceeded:
        return result(Verdict.TIME_LIMIT_EXCEEDED, "wall time limit exceeded")
    if cgroup.oom_killed():
        return result(Verdict.MEMORY_LIMIT_EXCEEDED, "memory limit exceeded")
    if code == SETUP_FAILED or (code == _BWRAP_FAILED and stderr.startswith("bwrap: ")):
        return result(Verdict.INTERNAL_ERROR, f"the sandbox could not start: {stderr.strip()}")
    if code == 0:
        return result(Verdict.ACCEPTED)
    if signal_name:
        return result(Verdict.RUNTIME_ERROR, f"killed by {signal_name}")
    return result(Verdict.RUNTIME_ERROR, f"exited with status {code}")
