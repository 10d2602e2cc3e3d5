"""The worker's side of the fork server: start it, and ask it for one fresh sandbox per job.

The zygote (`zygote_server.py`) is a Python interpreter started once inside bubblewrap. A
job then costs one fork of an interpreter that is already running instead of a new
bubblewrap sandbox and a new interpreter: a few milliseconds instead of tens.

Per job, two socket pairs. On the job's own, its process says hello, and the kernel attaches
the pid that the worker sees; the worker moves that process into the job's cgroup and only
then lets it build the rest, so nothing of the job runs outside its cgroup; the job goes
down the same socket later. On the report socket, which the job's process never holds, the
zygote says how the job ended. Output comes back on pipes, as from a subprocess; stdin is
handed over whole, in a read-only memfd.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from sandbox.cgroups import JobCgroup
from sandbox.errors import SandboxUnavailableError
from sandbox.pipe_reader import PipeReader

SERVER_SOURCE = Path(__file__).with_name("zygote_server.py")
# How a job runs in the forked interpreter: shared with the Docker keeper.
PYTHON_MAIN_SOURCE = Path(__file__).with_name("python_main.py")
_START_TIMEOUT_S = 10.0
_HELLO_TIMEOUT_S = 5.0
_LAST_WORDS_CHARS = 2000
_UCRED = struct.Struct("3i")  # pid, uid, gid
_LEN = struct.Struct("!I")
_SETTLED = struct.Struct("!cII")  # b"M", then the sizes (MiB) of the dirs and /dev/shm
_STATUS = struct.Struct("!i")  # the zygote's report: how the job ended

# Builds the zygote's command line from the fds it inherits: the control socket, the job
# seccomp program, the seccomp program bwrap applies to the zygote itself, python_main.py,
# and the known job programs it compiles once (`Zygote`'s `python_entries`).
ArgvFactory = Callable[[int, int, int, int, int], Sequence[str]]


class ZygoteJob(BaseModel):
    """What the job's process needs to start the program in its sandbox."""

    entry: str
    args: list[str]
    files: dict[str, str]  # relative path -> content, the entry file included
    nofile: int
    cpu_s: int
    file_bytes: int


class DirSizes(BaseModel):
    """The sizes of a job's tmpfs dirs (its work dir and /tmp; /dev/shm), in MiB."""

    disk_mb: int
    shm_mb: int


class ZygoteGoneError(SandboxUnavailableError):
    """The fork server died or stopped answering; a new one may be started."""


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_SEALED = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def _read_only_stdin(stdin: str) -> int:
    """The job's stdin as a file it can read and seek but never write: sealed, since the
    job (uid 65534, which an unmapped owner shows as) could open it again for writing."""
    writable = os.memfd_create("crucible-stdin", os.MFD_ALLOW_SEALING)
    try:
        data = stdin.encode()
        while data:
            data = data[os.write(writable, data) :]
        fcntl.fcntl(writable, fcntl.F_ADD_SEALS, _SEALED)
        return os.open(f"/proc/self/fd/{writable}", os.O_RDONLY)
    finally:
        os.close(writable)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def _hello_pid(sock: socket.socket) -> int:
    """The pid (in the worker's pid namespace) of the process that sent the hello."""
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(_UCRED.size))
            break
        except BlockingIOError:
            await _readable(sock)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _, _ = _UCRED.unpack(payload[: _UCRED.size])
            if data == b"P" and pid > 0:
                return pid
    raise ZygoteGoneError("the fork server's job process did not say hello")


class ZygoteProcess:
    """A job forked by the zygote, with the interface `execution.execute` expects."""

    stdin = None  # handed over whole at the start

    def __init__(self, sock: socket.socket, job_sock: socket.socket, output: Output) -> None:
        self.stdout = output.stdout
        self.stderr = output.stderr
        self._output = output
        self._job_sock = job_sock
        self._status = asyncio.create_task(self._read_status(sock))
        self.reported = False  # True once the zygote said how the job ended

    def started(self) -> bool:
        """Whether the job's process got as far as its program (asked once it has ended):
        it says so on the job's socket, which it closes before the program starts."""
        try:
            return b"R" in self._job_sock.recv(16)
        except OSError:  # BlockingIOError included: it never said
            return False

    @property
    def returncode(self) -> int | None:
        return self._status.result() if self._status.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._status)

    def kill(self) -> None:
        """Nothing to do beyond the cgroup's kill: the process joined it before its job came."""

    async def _read_status(self, sock: socket.socket) -> int:
        # Read as soon as it is whole, not at the socket's end: the namespace's end (its
        # namespaces and mounts torn down) takes a millisecond or two more.
        loop = asyncio.get_running_loop()
        data = b""
        try:
            while len(data) < _STATUS.size:
                more = await loop.sock_recv(sock, _STATUS.size - len(data))
                if not more:
                    break
                data += more
        except ConnectionResetError:
            pass  # killed with the job unread (cancelled as it started): no report
        finally:
            sock.close()
        if len(data) < _STATUS.size:
            # No report: the process was killed (limits, cancel) before it could say.
            return -signal.SIGKILL
        self.reported = True
        (returncode,) = _STATUS.unpack(data)
        return returncode

    def close(self) -> None:
        self._status.cancel()
        self._output.close()
        self._job_sock.close()


class ReadySandbox:
    """A job's sandbox, built inside its cgroup: its process waits for the job."""

    def __init__(
        self, sock: socket.socket, job_sock: socket.socket, sizes: DirSizes, output: Output
    ) -> None:
        self._sock: socket.socket | None = sock
        self._job_sock = job_sock
        self.sizes = sizes  # of its dirs
        self._output: Output | None = output

    @property
    def waiting(self) -> bool:
        """False once its process is gone (the zygote says nothing until it has ended)."""
        if self._sock is None:
            return False
        readable, _, _ = select.select([self._sock], [], [], 0)
        return not readable

    async def start(self, job: ZygoteJob, stdin: str) -> ZygoteProcess:
        """Send the job (and its stdin) to the job's process, which starts the program."""
        if self._sock is None or self._output is None:
            raise ZygoteGoneError("this sandbox was discarded")
        sock, self._sock = self._sock, None
        output, self._output = self._output, None
        body = job.model_dump_json().encode()
        stdin_fd = _read_only_stdin(stdin)
        try:
            self._job_sock.sendmsg(
                [_LEN.pack(len(body))],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [stdin_fd]))],
            )
            await asyncio.get_running_loop().sock_sendall(self._job_sock, body)
        except BaseException as exc:
            sock.close()
            output.close()
            self._job_sock.close()
            if isinstance(exc, OSError):
                raise ZygoteGoneError(f"the job's process is gone: {exc!r}") from exc
            raise
        finally:
            os.close(stdin_fd)
        # The job's socket stays open: the job's process says on it that its program starts.
        return ZygoteProcess(sock, self._job_sock, output)

    def discard(self) -> None:
        """Let the sandbox go without a job (its process exits when its socket closes)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._job_sock.close()
        if self._output is not None:
            self._output.close()
            self._output = None


class Zygote:
    """One running fork server. `spawn()` is safe to call from many jobs at once."""

    def __init__(
        self,
        argv: ArgvFactory,
        job_filter: bytes,
        zygote_filter: bytes,
        python_entries: Sequence[str] = (),
    ) -> None:
        self._argv = argv
        self._python_entries = list(python_entries)
        self._job_filter = job_filter
        self._zygote_filter = zygote_filter
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._errors: BinaryIO | None = None  # the fork server's stderr, for its last words

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the fork server and wait until it is ready (blocking: call in a thread)."""
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        filters = [
            _memfd("crucible-job-seccomp", self._job_filter),
            _memfd("crucible-zygote-seccomp", self._zygote_filter),
            _memfd("crucible-python-main", PYTHON_MAIN_SOURCE.read_bytes()),
            _memfd("crucible-python-entries", json.dumps(self._python_entries).encode()),
        ]
        inherited = [theirs.fileno(), *filters]
        source = _memfd("crucible-zygote", SERVER_SOURCE.read_bytes())
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the server's life
        try:
            self._process = subprocess.Popen(
                list(self._argv(*inherited)),
                stdin=source,  # python3 reads the program from stdin: no file in the sandbox
                stdout=subprocess.DEVNULL,
                stderr=self._errors,
                env={},
                cwd="/",
                pass_fds=inherited,
                start_new_session=True,
            )
        finally:
            theirs.close()
            for fd in (*filters, source):
                os.close(fd)
        control.settimeout(_START_TIMEOUT_S)
        try:
            ready = control.recv(1)
        except OSError:
            ready = b""
        if ready != b"R":
            control.close()
            raise ZygoteGoneError(f"the fork server did not start: {self.stop()}")
        control.setblocking(False)
        self._control = control

    async def prepare(self, cgroup: JobCgroup, sizes: DirSizes) -> ReadySandbox:
        """Fork a job's process into `cgroup`; it builds all that needs no job (its dirs of
        `sizes`), then waits for one."""
        if self._control is None or not self.alive:
            raise ZygoteGoneError("the fork server is not running")
        # The report socket: how the job ended, written by the zygote, never by the job.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        # The job's socket: its process says hello (with its pid), then gets the job.
        job_ours, job_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        job_ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        job_ours.setblocking(False)
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            output = Output(out_read, err_read)
        except BaseException:
            for sock in (ours, theirs, job_ours, job_theirs):
                sock.close()
            os.close(out_write)
            os.close(err_write)
            raise
        ready = ReadySandbox(ours, job_ours, sizes, output)
        handed = [theirs.fileno(), job_theirs.fileno(), out_write, err_write]
        try:
            self._control.sendmsg(
                [b"J"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", handed))]
            )
            # Not wait_for: on Python 3.11 it loses a cancel that lands as the hello comes.
            async with asyncio.timeout(_HELLO_TIMEOUT_S):
                pid = await _hello_pid(job_ours)
            # Before the job is sent: nothing of it runs outside its cgroup. In a thread: a
            # move can wait for an RCU grace period, which must not stall the worker's loop.
            await _finished(asyncio.ensure_future(asyncio.to_thread(cgroup.join, pid)))
            settled = _SETTLED.pack(b"M", sizes.disk_mb, sizes.shm_mb)
            await asyncio.get_running_loop().sock_sendall(job_ours, settled)
        except BaseException as exc:
            ready.discard()
            if isinstance(exc, (OSError, TimeoutError)):
                raise ZygoteGoneError(f"the fork server did not fork a job: {exc!r}") from exc
            raise
        finally:
            theirs.close()
            job_theirs.close()
            os.close(out_write)
            os.close(err_write)
        return ready

    def wait_dead(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the fork server's process to have ended (blocking)."""
        if self._process is not None:
            with suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=timeout_s)

    def stop(self) -> str:
        """Kill the fork server (jobs it forked die with it); what it said on stderr."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            with suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=_START_TIMEOUT_S)
        if self._errors is None:
            return ""
        self._errors.seek(0)
        said = self._errors.read().decode(errors="replace").strip()[-_LAST_WORDS_CHARS:]
        self._errors.close()
        self._errors = None
        return said or "no output"


async def _finished(work: asyncio.Future[None]) -> None:
    """Await `work` (in a thread); if cancelled, still until the thread is done with it.

    A thread cannot be stopped: a move into a cgroup that goes on after its caller gave up
    would land the process in the cgroup after the clean-up had found it empty to remove.
    """
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        with suppress(Exception):
            await work
        raise


class Output:
    """The readers of a job's stdout and stderr pipes, made with its sandbox: ahead of it."""

    def __init__(self, stdout_fd: int, stderr_fd: int) -> None:
        """Readers of the two pipes, which they own from here on (closed if this fails)."""
        self.stdout = asyncio.StreamReader()
        self.stderr = asyncio.StreamReader()
        self._pipes: list[PipeReader] = []
        unowned = [stdout_fd, stderr_fd]
        try:
            for reader in (self.stdout, self.stderr):
                self._pipes.append(PipeReader(unowned.pop(0), reader))
        except BaseException:
            self.close()
            for fd in unowned:
                os.close(fd)
            raise

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.close()
