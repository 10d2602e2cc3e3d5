"""A cgroup per job (cgroup v1): memory, processes and CPU capped; usage read; all killed.

The job's first process joins the cgroup before it can fork (see `bwrap.py`), so everything
the job ever starts, double-forked daemons included, is inside and dies with it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import secrets
import signal
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import SandboxUnavailableError
from sandbox.models import ExecLimits

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
PARENT = "crucible"
_CPU_PERIOD_US = 100_000
_KILL_FIRST_POLL_S = 0.0005
_KILL_POLL_S = 0.01
_KILL_TIMEOUT_S = 5.0  # a frozen cgroup empties in milliseconds
STALE_AFTER_S = 60.0  # an empty job cgroup this old belongs to no live worker
_MIB = 1024 * 1024
_READ_BYTES = 64  # a counter's value, with room
_READ_CHUNK_BYTES = 4096


# os-level calls on plain string paths: a job reads and writes a few dozen of these files,
# and pathlib's objects and text layer cost more than the kernel does here.
def _write(path: str, value: str | int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        data = b""
        while chunk := os.read(fd, _READ_CHUNK_BYTES):
            data += chunk
        return data
    finally:
        os.close(fd)


def _read_int(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return int(os.read(fd, _READ_BYTES).split()[0])
    finally:
        os.close(fd)


def _name(job_id: str) -> str:
    # A random suffix: a redelivered job (same id) may overlap a dying earlier attempt.
    return f"{job_id}-{secrets.token_hex(4)}"


def check_cgroups() -> None:
    """Raise SandboxUnavailableError unless every controller we need is mounted and writable."""
    for controller in CONTROLLERS:
        base = CGROUP_ROOT / controller
        if not (base / "cgroup.procs").exists():
            raise SandboxUnavailableError(
                f"cgroup v1 controller {controller!r} is not mounted at {base}; "
                "the bwrap backend needs memory, pids, cpu, cpuacct and freezer"
            )
        if not os.access(base, os.W_OK):
            raise SandboxUnavailableError(f"{base} is not writable: run the worker as root")


def sweep_stale(min_age_s: float = STALE_AFTER_S) -> int:
    """Remove the empty job cgroups older than `min_age_s`; how many went.

    A worker that died (killed, or its host restarted it) leaves the cgroups it had made:
    those of its running jobs and of the sandboxes it had built ahead. Their processes die
    with it, the directories stay, and each memory cgroup holds kernel memory. No live
    worker keeps a job cgroup empty for long (a process joins it within milliseconds of its
    making, and it is removed once its job's processes are gone), so an old empty one is no
    one's; one that is busy after all is refused by the kernel and stays.
    """
    swept = 0
    now = time.time()
    for controller in CONTROLLERS:
        parent = os.path.join(CGROUP_ROOT, controller, PARENT)
        try:
            entries = list(os.scandir(parent))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if not entry.is_dir() or now - entry.stat().st_mtime < min_age_s:
                    continue
                if _read(os.path.join(entry.path, "cgroup.procs")).strip():
                    continue
                os.rmdir(entry.path)
            except OSError:
                continue  # gone meanwhile, or busy after all
            swept += 1
    if swept:
        log.info("removed %d stale cgroup directories left by workers that died", swept)
    return swept


@dataclass
class JobCgroup:
    """One job's cgroup in every controller; `remove()` after `kill()`.

    A cgroup may serve one job after another (`reset()` between them): its directories then
    outlive each job, which saves making and removing ten of them per job.
    """

    dirs: dict[str, str]  # controller -> the job's directory in it
    limits: ExecLimits | None = None  # the caps set now
    oom_kills_before: int = 0  # the kernel's count of OOM kills when this job began

    @classmethod
    def create(cls, job_id: str, limits: ExecLimits) -> JobCgroup:
        name = _name(job_id)
        dirs = {c: os.path.join(CGROUP_ROOT, c, PARENT, name) for c in CONTROLLERS}
        for path in dirs.values():
            os.makedirs(path)
        cgroup = cls(dirs)
        cgroup.apply(limits)
        # At most one core per job: one job must not starve the others on the machine.
        _write(f"{dirs['cpu']}/cpu.cfs_period_us", _CPU_PERIOD_US)
        _write(f"{dirs['cpu']}/cpu.cfs_quota_us", _CPU_PERIOD_US)
        return cgroup

    def apply(self, limits: ExecLimits) -> None:
        """Set the memory and process caps (also to lower them between compile and run)."""
        if limits == self.limits:
            return
        memory = self.dirs["memory"]
        limit = str(limits.memory_mb * _MIB)
        memsw = f"{memory}/memory.memsw.limit_in_bytes"
        # memsw may never be below the memory limit: lower memory first, raise memsw first.
        # Swap must not become a way around the memory limit, so both get the same value.
        order = [f"{memory}/memory.limit_in_bytes"] + ([memsw] if os.path.exists(memsw) else [])
        current = _read_int(order[0])
        for path in order if int(limit) <= current else reversed(order):
            _write(path, limit)
        _write(f"{self.dirs['pids']}/pids.max", limits.processes)
        self.limits = limits

    @property
    def busy(self) -> bool:
        """True while any process is in it, a zombie included: not yet free for another job."""
        return _read_int(f"{self.dirs['pids']}/pids.current") > 0

    def charged_bytes(self) -> int:
        """Memory still charged to it: what its processes left in the kernel's caches."""
        return _read_int(f"{self.dirs['memory']}/memory.usage_in_bytes")

    def reset(self) -> None:
        """Ready it, empty, for another job: its peak memory, CPU time and failures counted
        from now (the OOM kill count cannot be reset: it is counted from here)."""
        memory = self.dirs["memory"]
        _write(f"{memory}/memory.max_usage_in_bytes", 0)
        _write(f"{memory}/memory.failcnt", 0)
        _write(f"{self.dirs['cpuacct']}/cpuacct.usage", 0)
        self.oom_kills_before = self._oom_kills() or 0

    def touch(self) -> None:
        """Date its directories now: `sweep_stale` takes an old empty one for a dead worker's."""
        for path in self.dirs.values():
            os.utime(path)

    @property
    def procs_files(self) -> list[str]:
        """Where the job's first process writes its pid, once per controller."""
        return [f"{path}/cgroup.procs" for path in self.dirs.values()]

    def join(self, pid: int) -> None:
        """Move process `pid` into the job's cgroup in every controller."""
        for procs in self.procs_files:
            _write(procs, pid)

    def reset_peak(self) -> None:
        """Forget the peak so far: a compiler's memory is not the program's."""
        _write(f"{self.dirs['memory']}/memory.max_usage_in_bytes", 0)

    def cpu_time_s(self) -> float:
        return _read_int(f"{self.dirs['cpuacct']}/cpuacct.usage") / 1e9

    def memory_peak_mb(self) -> float:
        return _read_int(f"{self.dirs['memory']}/memory.max_usage_in_bytes") / _MIB

    def oom_killed(self) -> bool:
        """True when the kernel killed a process of the job for exceeding its memory."""
        kills = self._oom_kills()
        if kills is not None:
            return kills > self.oom_kills_before
        # Older kernels do not count OOM kills; hitting the limit at all is the best sign.
        return _read_int(f"{self.dirs['memory']}/memory.failcnt") > 0

    def _oom_kills(self) -> int | None:
        for line in _read(f"{self.dirs['memory']}/memory.oom_control").splitlines():
            key, _, value = line.partition(b" ")
            if key == b"oom_kill":
                return int(value)
        return None

    @property
    def empty(self) -> bool:
        return not self._tasks()

    def _tasks(self) -> set[int]:
        # Every controller's: a process still joining them one by one (a job cancelled as
        # it starts) may be in some and not yet in others, and must not be missed.
        tasks: set[int] = set()
        for path in self.procs_files:
            # Removed already (the kernel refuses to remove a cgroup with a process in it):
            # nothing is left in it to kill or wait for.
            with suppress(FileNotFoundError):
                tasks.update(int(pid) for pid in _read(path).split())
        return tasks

    async def kill(self, wait: bool = True) -> None:
        """Kill every process of the job; freeze first so that nothing can fork meanwhile.

        Without `wait`, return once each process found is killed, not once the kernel has
        torn it down: for a job whose pid namespace is going anyway (its pid 1 exits or is
        killed, and takes every process in it along), which `Remover` waits for.
        """
        if not self._tasks():
            return  # already gone (the fork server's jobs end with their pid namespace)
        freezer = f"{self.dirs['freezer']}/freezer.state"
        _write(freezer, "FROZEN")
        pause_s = _KILL_FIRST_POLL_S
        deadline = time.monotonic() + _KILL_TIMEOUT_S
        while tasks := self._tasks():
            if time.monotonic() > deadline:
                raise SandboxUnavailableError(f"could not empty cgroup {self.dirs['pids']}")
            for pid in tasks:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # Frozen tasks die only when thawed; SIGKILL is pending, so they cannot run on.
            _write(freezer, "THAWED")
            if not wait:
                return
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, _KILL_POLL_S)  # most jobs are gone within a millisecond

    def remove(self) -> None:
        """Delete the (empty) cgroup directories."""
        for path in self.dirs.values():
            with suppress(FileNotFoundError):
                os.rmdir(path)


class Remover:
    """Removes ended jobs' cgroups in a thread of its own, in order, off the event loop.

    Removing a memory cgroup whose namespaces the kernel is still tearing down blocks for
    milliseconds. One long-lived thread fed by a queue costs the loop a `put` per job, where
    a thread pool's hand-off (a future, a wake-up and a callback back) cost more than the
    rest of the job's cgroup work together.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[JobCgroup | _Settled | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def remove(self, cgroup: JobCgroup) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=_remove_all, args=(self._queue,), name="cgroup-remover", daemon=True
            )
            self._thread.start()
        self._queue.put(cgroup)

    async def settle(self) -> None:
        """Until every cgroup handed over so far is removed."""
        if self._thread is None:
            return
        loop = asyncio.get_running_loop()
        settled = loop.create_future()
        self._queue.put(_Settled(loop, settled))
        await settled

    def close(self) -> None:
        """Let the thread end once it has removed what it was given."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None


@dataclass(frozen=True)
class _Settled:
    """A marker: everything queued before it is removed."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]

    def set(self) -> None:
        def resolve() -> None:
            if not self.future.done():
                self.future.set_result(None)

        with suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            self.loop.call_soon_threadsafe(resolve)


def _remove_all(work: queue.SimpleQueue[JobCgroup | _Settled | None]) -> None:
    while (item := work.get()) is not None:
        if isinstance(item, _Settled):
            item.set()
            continue
        deadline = time.monotonic() + _KILL_TIMEOUT_S
        while True:
            try:
                item.remove()
                break
            except OSError as exc:
                # Busy: its processes are killed, and the kernel is still tearing them down.
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.exception("could not remove a job's cgroup")
                    break
            time.sleep(_KILL_FIRST_POLL_S)
