"""Running one sandboxed command to its end: limits enforced from outside, then a verdict.

A compiled language runs in two phases in one sandbox: the compiler under the compile
limits, then the program under the job's. The wrapper reports the switch by writing a byte
to a pipe (`phase_fd`), which it closes before the program starts.

Whether the sandbox was built is said the same way, by the sandbox and never by the job
(`started`): a program's own exit status is only ever the program's. A status alone cannot
tell: a job that exits 125, or writes "bwrap: " and exits 1, would otherwise be reported
as the platform failing (`internal_error`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.cgroups import JobCgroup
from sandbox.models import ExecLimits, ExecResult, OutputSink, Verdict
from sandbox.output import OutputCollector
from sandbox.pipe_reader import PipeReader

_CPU_POLL_S = 0.05
_DRAIN_TIMEOUT_S = 5.0
SETUP_FAILED = 125  # our entry shell could not join the cgroup or set rlimits
_SIGNAL_BASE = 128  # bwrap reports a program killed by signal N as status 128 + N


@dataclass(frozen=True)
class Command:
    argv: Sequence[str]
    env: Mapping[str, str]
    pass_fds: Sequence[int]


@dataclass
class _Phase:
    limits: ExecLimits
    compiling: bool
    started: float
    cpu_base_s: float


async def _watch_cpu(cgroup: JobCgroup, limit_s: float) -> None:
    # RLIMIT_CPU caps each process; this caps the job's processes together. Most jobs are
    # over before the first poll; the end of a job checks the total once more anyway.
    await asyncio.sleep(_CPU_POLL_S)
    while cgroup.cpu_time_s() < limit_s:  # noqa: ASYNC110 - polling a kernel counter
        await asyncio.sleep(_CPU_POLL_S)


async def _wait_compiled(switch: asyncio.StreamReader) -> bool:
    """True once the wrapper reports a finished compile; False when it exits without."""
    return bool(await switch.read(1))


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


class Process(Protocol):
    """A started job: an asyncio subprocess, or a job forked by the zygote (`zygote.py`)."""

    @property
    def stdin(self) -> asyncio.StreamWriter | None: ...  # None: stdin was handed over whole
    @property
    def stdout(self) -> asyncio.StreamReader | None: ...
    @property
    def stderr(self) -> asyncio.StreamReader | None: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...
    def kill(self) -> None: ...


async def spawn(command: Command) -> asyncio.subprocess.Process:
    """Start `command` (which joins its cgroup itself) with piped stdio."""
    return await asyncio.create_subprocess_exec(
        *command.argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(command.env),
        cwd="/",  # bwrap's cwd shows in the sandbox (/proc/1/environ's PWD): reveal nothing
        pass_fds=tuple(command.pass_fds),
        start_new_session=True,
    )


async def execute(
    process: Process,
    stdin: str,
    limits: ExecLimits,
    cgroup: JobCgroup,
    on_output: OutputSink,
    started: Callable[[], bool],
    compile_limits: ExecLimits | None = None,
    phase_fd: int | None = None,
) -> ExecResult:
    """Run the started `process` (already in `cgroup`) to its end, streaming its output.

    `started`, asked once the process has ended: whether its sandbox was built and the
    program (or its compiler) began; if not, the platform failed, whatever the status."""
    assert process.stdout and process.stderr
    output = OutputCollector(on_output, limits.output_bytes)
    readers = [
        asyncio.create_task(output.read("stdout", process.stdout)),
        asyncio.create_task(output.read("stderr", process.stderr)),
    ]
    exited = asyncio.create_task(process.wait())
    overflow = asyncio.create_task(output.overflowed.wait())
    phase_pipe = compiled = None
    if phase_fd is not None:
        switch = asyncio.StreamReader()
        phase_pipe = PipeReader(phase_fd, switch)
        compiled = asyncio.create_task(_wait_compiled(switch))
    phase = _Phase(compile_limits or limits, compile_limits is not None, time.monotonic(), 0.0)
    helpers: list[asyncio.Task[Any]] = [exited, overflow]
    if process.stdin is not None:
        helpers.append(asyncio.create_task(_feed(process.stdin, stdin)))
    cpu: asyncio.Task[None] | None = None
    try:
        while True:
            cpu = asyncio.create_task(
                _watch_cpu(cgroup, phase.cpu_base_s + phase.limits.cpu_time_s)
            )
            watched = {exited, overflow, cpu}
            if compiled is not None and not compiled.done():
                watched.add(compiled)
            # The wall clock is enforced from out here: a job that stops itself (SIGSTOP)
            # or ignores SIGTERM still ends, because the whole cgroup is killed.
            remaining_s = phase.started + phase.limits.wall_time_s - time.monotonic()
            done, _ = await asyncio.wait(
                watched, timeout=max(remaining_s, 0), return_when=asyncio.FIRST_COMPLETED
            )
            if compiled in done and compiled.result() and not done & {exited, overflow, cpu}:
                cpu.cancel()
                cgroup.apply(limits)  # the program gets the job's limits, not the compiler's
                cgroup.reset_peak()
                phase = _Phase(limits, False, time.monotonic(), cgroup.cpu_time_s())
                continue
            if done == {compiled}:
                cpu.cancel()
                continue  # the compiler failed; wait for the wrapper to exit
            break
        # Everything the job started dies now, daemons included; the pid namespace they are
        # in goes with them, so the result need not wait for the kernel to tear them down.
        # Every process of the job is in each of its cgroups by now (the first joined them
        # all before it ran anything; the rest inherit them), so one count tells if any is.
        if cgroup.busy:
            await cgroup.kill(wait=False)
        await process.wait()
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):  # not wait_for: it can lose a cancel
            await asyncio.gather(*readers)
    finally:
        for task in (*helpers, *readers, *(t for t in (cpu, compiled) if t is not None)):
            task.cancel()
        if process.returncode is None:
            await cgroup.kill()
            # Cancelled as it started, it may not be in its cgroup yet: it goes all the same.
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if phase_pipe is not None:
            phase_pipe.close()
    cpu_time_s = cgroup.cpu_time_s() - phase.cpu_base_s
    return _result(
        returncode=process.returncode,
        started=started(),
        compiling=phase.compiling,
        wall_exceeded=not done,
        cpu_exceeded=cpu in done or cpu_time_s >= phase.limits.cpu_time_s,
        output=output,
        cgroup=cgroup,
        wall_time_s=time.monotonic() - phase.started,
        cpu_time_s=cpu_time_s,
    )


def _result(
    returncode: int | None,
    started: bool,
    compiling: bool,
    wall_exceeded: bool,
    cpu_exceeded: bool,
    output: OutputCollector,
    cgroup: JobCgroup,
    wall_time_s: float,
    cpu_time_s: float,
) -> ExecResult:
    measured = ExecResult(
        verdict=Verdict.ACCEPTED,
        stdout=output.text("stdout"),
        stderr=output.text("stderr"),
        wall_time_s=round(wall_time_s, 4),
        cpu_time_s=round(cpu_time_s, 4),
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
    if not started:
        # Its own files can fill its memory or disk before it starts: that is the job's.
        if cgroup.oom_killed():
            return result(Verdict.MEMORY_LIMIT_EXCEEDED, "memory limit exceeded")
        if wall_exceeded:
            return result(Verdict.TIME_LIMIT_EXCEEDED, "wall time limit exceeded")
        reason = f"the sandbox could not start: {measured.stderr.strip()}"
        return result(Verdict.INTERNAL_ERROR, reason)
    if compiling:
        if wall_exceeded or cpu_exceeded:
            return result(Verdict.COMPILATION_ERROR, "compilation exceeded its time limit")
        if cgroup.oom_killed():
            return result(Verdict.COMPILATION_ERROR, "compilation exceeded its memory limit")
        return result(Verdict.COMPILATION_ERROR, "compilation failed")
    if cpu_exceeded or signal_number == signal.SIGXCPU:
        return result(Verdict.TIME_LIMIT_EXCEEDED, "CPU time limit exceeded")
    if wall_exceeded:
        return result(Verdict.TIME_LIMIT_EXCEEDED, "wall time limit exceeded")
    if cgroup.oom_killed():
        return result(Verdict.MEMORY_LIMIT_EXCEEDED, "memory limit exceeded")
    if code == 0:
        return result(Verdict.ACCEPTED)
    if signal_name:
        return result(Verdict.RUNTIME_ERROR, f"killed by {signal_name}")
    return result(Verdict.RUNTIME_ERROR, f"exited with status {code}")
