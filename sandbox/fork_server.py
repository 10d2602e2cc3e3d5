"""Python jobs through the bwrap backend's fork server: one zygote, and sandboxes built ahead.

`BwrapSandbox` hands a Python job here. The fork server (`zygote.py`) is started on first
use and replaced when found dead; a few job sandboxes wait, each already in a cgroup, with its
namespaces, /proc, dirs, privileges dropped and the job's process forked
(`zygote_server.py`), so that a job starts with only its files, its limits and its code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Sequence
from contextlib import suppress

from sandbox.cgroup_pool import CgroupPool
from sandbox.cgroups import JobCgroup, Remover
from sandbox.errors import SandboxUnavailableError
from sandbox.execution import execute
from sandbox.models import ExecLimits, ExecResult, ExecSpec, OutputSink, Verdict
from sandbox.seccomp import job_program, zygote_program
from sandbox.zygote import ArgvFactory, DirSizes, ReadySandbox, Zygote, ZygoteGoneError, ZygoteJob

log = logging.getLogger(__name__)

_READY_SANDBOXES = 2  # built ahead of their jobs: jobs start without waiting for one
# How long after a job ends the next sandbox is built, unless the jobs that come take every
# sandbox built ahead first. Its fork and mounts take a core for ~2 ms: on a 2-core machine,
# built at once, it held the job's `finished` back on its way through the worker, NATS and
# the gateway to the client (stored to received 3.3 ms, against 1.7-2.1 ms built later).
_BUILD_AFTER_S = 0.005
_ABANDON_WAIT_S = 2.0
_DEATH_WAIT_S = 1.0
_ABANDON_POLL_S = 0.01
_SETTLE_S = 5.0  # killed processes are gone within milliseconds

Ready = tuple[JobCgroup, ReadySandbox]


class ForkServer:
    """Runs jobs in processes forked by one live zygote, started with `argv`."""

    def __init__(
        self, argv: ArgvFactory, sizes: DirSizes, python_entries: Sequence[str] = ()
    ) -> None:
        self._argv = argv
        self._python_entries = python_entries  # compiled once by each zygote, for jobs
        self._sizes = sizes  # of the dirs of the sandboxes built ahead: the default limits'
        self._zygote: Zygote | None = None
        self._lock = asyncio.Lock()
        self._ready: list[Ready] = []  # sandboxes waiting for their job
        self._refill: asyncio.Task[None] | None = None
        self._emptied = asyncio.Event()  # a job found no sandbox built ahead left: build now
        self._usable = True  # False once it could not start here, or after close()
        self._remover = Remover()  # cgroups no longer needed, going
        self._cgroups = CgroupPool(self._remover)  # cgroups of ended jobs, for the next ones

    @property
    def alive(self) -> bool:
        return self._zygote is not None and self._zygote.alive

    async def run(
        self, job: ZygoteJob, sizes: DirSizes, spec: ExecSpec, on_output: OutputSink
    ) -> ExecResult | None:
        """The job's result (its dirs of `sizes`); None when no fork server can run here
        (use the classic path)."""
        for _ in range(2):  # a fork server found dead is replaced once, then it's broken
            zygote = await self._running()
            if zygote is None:
                return None
            try:
                return await self._run(zygote, job, sizes, spec, on_output)
            except ZygoteGoneError as exc:
                said = await asyncio.to_thread(zygote.stop)
                log.warning("%s; starting a new one (it said: %s)", exc, said)
        raise SandboxUnavailableError("the fork server keeps failing; see the log")

    async def close(self) -> None:
        self._usable = False
        if self._refill is not None:
            self._refill.cancel()
            with suppress(asyncio.CancelledError):
                await self._refill
        await self._discard_ready()
        if self._zygote is not None:
            await asyncio.to_thread(self._zygote.stop)
            self._zygote = None
        for cgroup in self._cgroups.drain():
            await cgroup.kill()
            self._remover.remove(cgroup)
        await self.settle()
        self._remover.close()

    async def _running(self) -> Zygote | None:
        """The live fork server, started on first use; None when it cannot run here."""
        async with self._lock:
            if self._zygote is not None and self._zygote.alive:
                return self._zygote
            if not self._usable:
                return None
            # What a fork server found dead had built ahead went with it, whether or not its
            # sockets have closed yet: a job sent there would wait out its time limit.
            await self._discard_ready()
            zygote = Zygote(self._argv, job_program(), zygote_program(), self._python_entries)
            try:
                await asyncio.to_thread(zygote.start)
            except ZygoteGoneError as exc:
                log.warning("%s; Python jobs take the classic path", exc)
                self._usable = False
                return None
            # A sandbox dropped unclosed leaves no process, socket or cgroup behind.
            weakref.finalize(self, _abandon, zygote, self._ready, self._cgroups, self._remover)
            self._zygote = zygote
            return zygote

    async def _run(
        self,
        zygote: Zygote,
        job: ZygoteJob,
        sizes: DirSizes,
        spec: ExecSpec,
        on_output: OutputSink,
    ) -> ExecResult:
        cgroup, sandbox = await self._take_ready(zygote, sizes)
        process = None
        try:
            cgroup.apply(spec.limits)
            process = await sandbox.start(job, spec.stdin)
            result = await execute(
                process, spec.stdin, spec.limits, cgroup, on_output, process.started
            )
            if not process.reported and result.verdict is Verdict.RUNTIME_ERROR:
                # Killed without a word, by none of the limits: if the fork server is going
                # too, its death took the job with it (its processes die before it does).
                await asyncio.to_thread(zygote.wait_dead, _DEATH_WAIT_S)
            if not process.reported and not zygote.alive:
                # Its death took the job with it: the platform failed, not the program.
                return ExecResult(
                    verdict=Verdict.INTERNAL_ERROR, reason="the fork server died during the job"
                )
            return result
        finally:
            if process is None:
                sandbox.discard()
                await cgroup.kill()
            else:
                process.close()
            # For a later job once its processes are gone (the kernel may still be tearing
            # them down): no cgroup is made or removed per job.
            self._cgroups.give_back(cgroup)
            # Built once the job is done, not beside it, and not at once: on few cores,
            # building the next sandbox would slow this job down, then its result on its way
            # to the client. Another still waits for the next job.
            if self._usable and (self._refill is None or self._refill.done()):
                self._emptied.clear()
                self._refill = asyncio.create_task(self._fill(zygote))

    async def settle(self) -> None:
        """Until the processes of the jobs that ended are gone, and the cgroups no longer
        needed removed."""
        deadline = time.monotonic() + _SETTLE_S
        while any(cgroup.busy for cgroup in self._cgroups.idle):
            if time.monotonic() > deadline:
                raise SandboxUnavailableError("a job's processes outlived its kill")
            await asyncio.sleep(_ABANDON_POLL_S)
        await self._remover.settle()

    async def _take_ready(self, zygote: Zygote, sizes: DirSizes) -> Ready:
        """A sandbox built ahead of its job if one of `sizes` waits, else a new one.

        Dirs of other sizes (a job's own disk limit) cannot be changed once the sandbox has
        dropped its privileges: such a job waits for a sandbox of its own."""
        gone = [entry for entry in self._ready if not entry[1].waiting]
        self._ready[:] = [entry for entry in self._ready if entry not in gone]
        for cgroup, sandbox in gone:
            await self._discard(cgroup, sandbox)
        taken = next((entry for entry in self._ready if entry[1].sizes == sizes), None)
        if taken is not None:
            self._ready.remove(taken)
        if not self._ready:
            self._emptied.set()  # jobs come faster than sandboxes are built: build now
        return taken or await self._prepare(zygote, sizes)

    async def _fill(self, zygote: Zygote) -> None:
        # Built between jobs, so that the next job finds its namespaces, /proc, cgroup and
        # process made: its own start is then only its files, its limits and its code.
        with suppress(TimeoutError):
            await asyncio.wait_for(self._emptied.wait(), _BUILD_AFTER_S)
        while len(self._ready) < _READY_SANDBOXES and zygote.alive:
            try:
                self._ready.append(await self._prepare(zygote, self._sizes))
            except ZygoteGoneError:
                return  # the next job finds out, and replaces the fork server

    async def _prepare(self, zygote: Zygote, sizes: DirSizes) -> Ready:
        # The default limits until the job's own are known.
        cgroup = self._cgroups.take() or await _new_cgroup()
        try:
            return cgroup, await zygote.prepare(cgroup, sizes)
        except BaseException:
            await cgroup.kill()
            self._cgroups.give_back(cgroup)
            raise

    async def _discard_ready(self) -> None:
        while self._ready:
            await self._discard(*self._ready.pop())

    async def _discard(self, cgroup: JobCgroup, sandbox: ReadySandbox) -> None:
        sandbox.discard()
        await cgroup.kill()
        self._cgroups.give_back(cgroup)


def cgroup_prefix() -> str:
    """How this worker's fork server names its cgroups: by the worker's pid, for operators."""
    return f"sandbox-{os.getpid()}"


async def _new_cgroup() -> JobCgroup:
    # Made in a thread: its mkdirs can wait on the kernel's cgroup lock (which the removal of
    # cgroups holds), and a sandbox is built as a job's result is being sent.
    making = asyncio.ensure_future(
        asyncio.to_thread(JobCgroup.create, cgroup_prefix(), ExecLimits())
    )
    try:
        return await asyncio.shield(making)
    except asyncio.CancelledError:
        with suppress(Exception):
            (await making).remove()  # nothing is in it yet
        raise


def _abandon(zygote: Zygote, ready: list[Ready], pool: CgroupPool, remover: Remover) -> None:
    for _, sandbox in ready:
        sandbox.discard()
    zygote.stop()  # the processes it forked die with it
    deadline = time.monotonic() + _ABANDON_WAIT_S
    for cgroup in [cgroup for cgroup, _ in ready] + pool.drain():
        while not cgroup.empty and time.monotonic() < deadline:
            time.sleep(_ABANDON_POLL_S)
        with suppress(OSError):
            cgroup.remove()
    ready.clear()
    remover.close()
