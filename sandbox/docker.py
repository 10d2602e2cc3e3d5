"""The Docker backend: one fresh container per job, taken from a warm pool, removed after.

Containers have no network, no capabilities, no-new-privileges, a read-only root, tmpfs work
dirs with a size, memory, pids and CPU limits, uid 65534, and optionally another runtime
(gVisor's `runsc`). Each container's main process is a keeper (`docker_keeper.py`) that the
worker attached to before starting it (`docker_attach.py`): a job travels down the open attach
stream, its output comes back on it, and the keeper's end mark says how it ended, so a job
costs no call to the engine. Nothing is copied through the host's filesystem. DOCKER_HOST may
name a remote engine (mutual TLS).
"""

from __future__ import annotations

import asyncio
import marshal
import math
import secrets
import signal
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import docker
import requests

from sandbox.base import register
from sandbox.docker_attach import Attached, EndMark
from sandbox.docker_keeper import HEADER_DIGITS, SETUP_FAILED, TOKEN_BYTES
from sandbox.docker_pool import WORK_DIR, ContainerPool, DockerSettings, memory_limit
from sandbox.docker_usage import Usage, reset_peak
from sandbox.errors import SandboxUnavailableError
from sandbox.files import check_file_names
from sandbox.models import (
    ExecLimits,
    ExecResult,
    ExecSpec,
    OutputSink,
    RuntimeInfo,
    Stream,
    Verdict,
)
from sandbox.output import OutputCollector
from sandbox.runtimes import BINARY, COMPILE_LIMITS, RUNTIMES, Runtime, parse_version

_SIGNAL_BASE = 128
_DRAIN_AFTER_KILL_S = 0.5  # output still in flight when the container is killed
_SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8"}
_TOKEN_BYTES = TOKEN_BYTES // 2  # random bytes, sent as hex digits


# API 1.41 is Docker 20.10's; engines from 20.10 on speak it. Pinned, so that creating the
# client makes no request before `trust_env` is off (below).
_API_VERSION = "1.41"


@dataclass(frozen=True)
class _Ran:
    """How one step ended."""

    code: int | None  # None when we killed it, or when its container stopped under it
    timed_out: bool
    usage: Usage
    wall_time_s: float
    lost: bool = False  # the container stopped before the keeper could report the end


def _engine() -> docker.DockerClient:
    """A client for DOCKER_HOST (and DOCKER_TLS_VERIFY / DOCKER_CERT_PATH for mutual TLS)."""
    client = docker.DockerClient(**docker.utils.kwargs_from_env(), version=_API_VERSION)
    # requests lets REQUESTS_CA_BUNDLE override the engine's own CA on every request, which
    # breaks mutual TLS to a remote engine whenever that variable is set (as on many hosts).
    client.api.trust_env = False
    return client


def _signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@register("docker")
class DockerSandbox:
    """Each job in its own container, used once."""

    name = "docker"

    def __init__(self, settings: DockerSettings | None = None) -> None:
        self._settings = settings or DockerSettings()
        self._client: docker.DockerClient | None = None
        self._pool: ContainerPool | None = None
        self._runtimes: dict[str, Runtime] = {}
        self._versions: dict[str, str] = {}

    async def check(self) -> None:
        try:
            self._client = _engine()
            await asyncio.to_thread(self._client.ping)
            await asyncio.to_thread(self._client.images.get, self._settings.image)
        except docker.errors.ImageNotFound as exc:
            raise SandboxUnavailableError(
                f"image {self._settings.image} missing: run `crucible sandbox build-image`"
            ) from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            # An engine that does not answer at all surfaces as requests' own error.
            raise SandboxUnavailableError(f"no Docker engine: {exc}") from exc
        self._pool = ContainerPool(self._client, self._settings)
        await asyncio.to_thread(self._pool.remove_orphans)
        await self._probe_runtimes()
        self._pool.refill()

    async def _probe_runtimes(self) -> None:
        """Which interpreters the image has, and their versions, asked of the image itself."""
        assert self._client is not None
        probe = "; ".join(
            f"test -x {rt.interpreter} && echo {rt.language} $({rt.interpreter} --version 2>&1)"
            for rt in RUNTIMES.values()
        )
        output = await asyncio.to_thread(
            self._client.containers.run,
            self._settings.image,
            ["/bin/sh", "-c", probe],
            remove=True,
            network_mode="none",
        )
        for line in output.decode().splitlines():
            language, _, version = line.partition(" ")
            if language in RUNTIMES:
                self._runtimes[language] = RUNTIMES[language]
                self._versions[language] = parse_version(version)
        if "python" not in self._runtimes:
            raise SandboxUnavailableError(f"image {self._settings.image} has no python3")

    async def settle(self) -> None:
        """Until the warm pool is refilled: a job's latency without the engine's backlog."""
        if self._pool is not None:
            await self._pool.settle()

    def _engine_is_local(self) -> bool:
        """True when the engine is on this host (a unix socket), so its cgroups are ours to read."""
        return self._client is not None and self._client.api.base_url.startswith("http+docker://")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._client is not None:
            self._client.close()  # its connection pool: sockets, TLS ones included

    def runtimes(self) -> list[RuntimeInfo]:
        return [RuntimeInfo(language=k, version=v) for k, v in self._versions.items()]

    async def run(self, spec: ExecSpec, on_output: OutputSink) -> ExecResult:
        if self._pool is None:
            await self.check()
        assert self._pool is not None
        runtime = self._runtimes.get(spec.language)
        if runtime is None:
            return ExecResult(
                verdict=Verdict.INTERNAL_ERROR,
                reason=f"{spec.language} is not available in image {self._settings.image}",
            )
        attached = await self._pool.take(spec.limits)
        try:
            return await self._execute(attached, spec, runtime, on_output)
        finally:
            self._pool.discard(attached)  # used once; removed off the job's critical path

    async def _execute(
        self, attached: Attached, spec: ExecSpec, runtime: Runtime, on_output: OutputSink
    ) -> ExecResult:
        check_file_names(list(spec.files), runtime.entry_file)
        output = OutputCollector(on_output, spec.limits.output_bytes)
        files = {runtime.entry_file: spec.code, **spec.files}
        if not runtime.compiled:
            argv = runtime.argv(spec.args)
        else:
            # A compile step of its own, under its own limits, before any of the job's code
            # runs: its exit status cannot be faked by the program.
            memory_mb = max(COMPILE_LIMITS.memory_mb, spec.limits.memory_mb)
            await self._set_memory(attached, memory_mb)
            built = await self._step(
                attached, files, runtime.compile_argv(), "", COMPILE_LIMITS, output
            )
            if built.code != 0 or output.overflowed.is_set():
                reason = "compilation exceeded its time limit" if built.timed_out else None
                return self._result(built, output, COMPILE_LIMITS).model_copy(
                    update={
                        "verdict": Verdict.COMPILATION_ERROR,
                        "reason": reason or "compilation failed",
                    }
                )
            try:
                await self._set_memory(attached, spec.limits.memory_mb)
            except docker.errors.APIError as exc:
                if "current usage" not in str(exc):
                    raise
                # What the compiler left (the binary, in the tmpfs) already holds more than
                # the program may use, and cannot be reclaimed: the job's, not the platform's.
                return self._result(built, output, spec.limits).model_copy(
                    update={
                        "verdict": Verdict.MEMORY_LIMIT_EXCEEDED,
                        "reason": "the compiled program does not fit in the memory limit",
                        "exit_code": None,
                    }
                )
            reset_peak(attached.container.id)
            files, argv = {}, [BINARY, *spec.args]
        # A Python job runs in the keeper's started interpreter, in the process forked for it.
        entry = runtime.entry_file if runtime.forkable else None
        ran = await self._step(attached, files, argv, spec.stdin, spec.limits, output, entry)
        return self._result(ran, output, spec.limits)

    @staticmethod
    async def _set_memory(attached: Attached, memory_mb: int) -> None:
        memory = memory_limit(memory_mb)
        await asyncio.to_thread(attached.container.update, mem_limit=memory, memswap_limit=memory)

    async def _step(
        self,
        attached: Attached,
        files: dict[str, str],
        argv: list[str],
        stdin: str,
        limits: ExecLimits,
        output: OutputCollector,
        python_entry: str | None = None,
    ) -> _Ran:
        """One program run by the container's keeper, to its end or to `limits`.

        With `python_entry`, the keeper's interpreter runs that file with `argv`'s arguments,
        as `argv` would, instead of `exec`ing `argv`.
        """
        token = secrets.token_hex(_TOKEN_BYTES).encode()
        bundle = marshal.dumps(
            {
                "files": files,
                "argv": argv,
                "env": _SANDBOX_ENV,
                "stdin": stdin,
                "cpu_s": math.ceil(limits.cpu_time_s),
                "entry": python_entry,
            }
        )
        before = Usage.of(attached.container.id)  # the keeper's start, an earlier step's
        started = time.monotonic()
        # The token last: the keeper reads it only once the program is forked.
        step = f"{len(bundle):0{HEADER_DIGITS}d}".encode() + bundle + token
        await asyncio.to_thread(attached.send, step)
        attached.listen(asyncio.get_running_loop())  # over TLS, only now (see the pool)
        # A reader per stream, so OutputCollector reads Docker's output as it reads pipes.
        feeds: dict[Stream, asyncio.StreamReader] = {
            "stdout": asyncio.StreamReader(),
            "stderr": asyncio.StreamReader(),
        }
        marks = {name: EndMark(token) for name in feeds}
        readers = [asyncio.create_task(output.read(name, feed)) for name, feed in feeds.items()]

        async def route() -> int | None:
            """The step's status from the keeper's marks; None if the stream ended first."""
            while not all(mark.found for mark in marks.values()):
                item = await attached.frames.get()
                if item is None:
                    for name, feed in feeds.items():
                        feed.feed_data(marks[name].rest())
                        feed.feed_eof()
                    return None
                name, data = item
                if not marks[name].found:
                    feeds[name].feed_data(marks[name].feed(data))
                    if marks[name].found:
                        feeds[name].feed_eof()
            return marks["stdout"].status

        routing = asyncio.create_task(route())
        overflow = asyncio.create_task(output.overflowed.wait())
        ended: asyncio.Future[Any] = asyncio.gather(routing, *readers)
        try:
            # The wall clock is enforced from out here, on the job's process, not its output:
            # the keeper marks the end when the program exits, whatever it left running.
            done, _ = await asyncio.wait(
                {ended, overflow}, timeout=limits.wall_time_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            finished = ended.done() and not ended.cancelled() and ended.exception() is None
            # Read the container's cgroup while it still exists: killing removes it.
            usage = Usage.of(attached.container.id)
            if not finished:
                # Kill the whole container: daemons, stopped and SIGTERM-ignoring processes.
                with suppress(docker.errors.DockerException):
                    await asyncio.to_thread(attached.container.kill)
                with suppress(Exception):
                    async with asyncio.timeout(_DRAIN_AFTER_KILL_S):  # wait_for can lose a cancel
                        await asyncio.shield(ended)
            pending = (ended, overflow, routing, *readers)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        wall_time_s = time.monotonic() - started
        code = routing.result() if finished else None
        if finished and code is None:  # the container stopped under the job: was it the OOM?
            return _Ran(None, False, await self._stopped_usage(attached), wall_time_s, lost=True)
        return _Ran(code, not done, usage.since(before, attached.keeper_mb), wall_time_s)

    @staticmethod
    async def _stopped_usage(attached: Attached) -> Usage:
        """A stopped container's cgroup is gone; the engine still knows of an OOM kill."""
        try:
            await asyncio.to_thread(attached.container.reload)
        except docker.errors.DockerException:
            return Usage(local=False)
        return Usage(local=False, oom_killed=bool(attached.container.attrs["State"]["OOMKilled"]))

    def _result(self, ran: _Ran, output: OutputCollector, limits: ExecLimits) -> ExecResult:
        usage, code = ran.usage, ran.code
        cpu_time_s = usage.cpu_time_s
        cpu_exceeded = usage.local and cpu_time_s >= limits.cpu_time_s
        wall_exceeded = ran.timed_out
        measured = ExecResult(
            verdict=Verdict.ACCEPTED,
            stdout=output.text("stdout"),
            stderr=output.text("stderr"),
            wall_time_s=round(ran.wall_time_s, 4),
            cpu_time_s=cpu_time_s,
            memory_peak_mb=usage.memory_peak_mb,
        )
        killed = code is not None and code != SETUP_FAILED and code > _SIGNAL_BASE
        signal_number = code - _SIGNAL_BASE if killed and code is not None else None
        name = _signal_name(signal_number)

        def result(verdict: Verdict, reason: str | None = None) -> ExecResult:
            return measured.model_copy(
                update={
                    "verdict": verdict,
                    "reason": reason,
                    "signal": name,
                    "exit_code": None if name else code,
                }
            )

        if output.overflowed.is_set():
            return result(Verdict.OUTPUT_LIMIT_EXCEEDED, "output limit exceeded")
        if cpu_exceeded or signal_number == signal.SIGXCPU:
            return result(Verdict.TIME_LIMIT_EXCEEDED, "CPU time limit exceeded")
        if wall_exceeded:
            return result(Verdict.TIME_LIMIT_EXCEEDED, "wall time limit exceeded")
        # A remote engine's cgroups are out of sight: a SIGKILL we did not send is the OOM killer.
        remote = not self._engine_is_local()
        if usage.oom_killed or (remote and signal_number == signal.SIGKILL):
            return result(Verdict.MEMORY_LIMIT_EXCEEDED, "memory limit exceeded")
        if code == 0:
            return result(Verdict.ACCEPTED)
        if ran.lost:
            return result(Verdict.INTERNAL_ERROR, "the job's container stopped under it")
        if code is None or code == SETUP_FAILED:
            return result(Verdict.INTERNAL_ERROR, "the job could not be started in its container")
        if name:
            return result(Verdict.RUNTIME_ERROR, f"killed by {name}")
        return result(Verdict.RUNTIME_ERROR, f"exited with status {code}")
