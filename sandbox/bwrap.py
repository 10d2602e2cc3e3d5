"""The bubblewrap backend: namespaces, a per-job cgroup, a fresh tmpfs, no network, uid 65534.

How a job starts, outside in:

    /bin/sh -c 'echo $$ > cgroup.procs...; ulimit ...; exec "$@"'   (root, joins the cgroup)
      setpriv --reuid 65534 ... --no-new-privs --bounding-set=-all   (drops root for good)
        bwrap --unshare-all ... --file FD /work/main.py ...          (unprivileged namespaces)
          /usr/bin/python3 -E -s -u main.py                          (the job)

The shell joins the cgroup *before* anything can fork (writing the pid after spawning would
race a fork bomb), and sets rlimits without `preexec_fn` (unsafe in a threaded worker).
bwrap then runs as the unprivileged host uid 65534, never as root.

Python jobs take the fast path: a fork server started once in a bubblewrap sandbox of its
own forks each job into fresh namespaces, cgroup, tmpfs dirs, seccomp filter and rlimits
(`fork_server.py`, `zygote.py`, `zygote_server.py`), so a job no longer pays for a new
interpreter.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from contextlib import suppress
from functools import cache
from pathlib import Path, PurePosixPath

from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.base import register
from sandbox.cgroups import JobCgroup, check_cgroups, sweep_stale
from sandbox.errors import SandboxUnavailableError
from sandbox.execution import SETUP_FAILED, Command, execute, spawn
from sandbox.files import check_file_names
from sandbox.fork_server import ForkServer
from sandbox.models import (
    ExecLimits,
    ExecResult,
    ExecSpec,
    OutputChunk,
    OutputSink,
    RuntimeInfo,
    Verdict,
)
from sandbox.runtimes import COMPILE_LIMITS, RUNTIMES, Runtime, available_runtimes
from sandbox.seccomp import seccomp_fd
from sandbox.zygote import DirSizes, ZygoteJob

SANDBOX_UID = 65534  # nobody, inside and outside the sandbox
WORK_DIR = "/work"
_MIB = 1024 * 1024
_SHM_MB = 16
_NOFILE = 256
_ULIMIT_BLOCK_BYTES = 512  # dash's `ulimit -f` counts 512-byte blocks
_SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8"}

# Joins the job's cgroups, caps what rlimits can cap, then becomes the rest of the command.
_ENTER = (
    f'for f in $CRUCIBLE_CGROUP_PROCS; do echo $$ > "$f" || exit {SETUP_FAILED}; done; '
    # bwrap's own environment stays readable in the sandbox at /proc/1/environ: leave it empty.
    "unset CRUCIBLE_CGROUP_PROCS; "
    # dash's ulimit takes one limit per call.
    f"ulimit -c 0 && ulimit -n {{nofile}} && ulimit -t {{cpu_s}} && ulimit -f {{file_blocks}} "
    f"|| exit {SETUP_FAILED}; "
    'exec "$@"'
)
_PACKAGES = {"bwrap": "bubblewrap", "setpriv": "util-linux"}
# Every signal at its default before anything of the job's: exec keeps an ignored signal
# ignored, and a worker started in the background by a script ignores SIGINT and SIGQUIT (a
# job's KeyboardInterrupt would never come), one under nohup SIGHUP.
_DEFAULT_SIGNALS = ["/usr/bin/env", "--default-signal"]
# The fork server builds each job's namespaces and mounts; every job's init drops all three.
_ZYGOTE_CAPS = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETPCAP")
_ZYGOTE_LIMITS = ExecLimits(disk_mb=1)  # its own dirs stay empty: each job mounts fresh ones
_SETPRIV_FLAGS = [
    f"--reuid={SANDBOX_UID}",
    f"--regid={SANDBOX_UID}",
    "--clear-groups",
    "--no-new-privs",
    "--inh-caps=-all",
    "--bounding-set=-all",
]


def _widest(limits: ExecLimits, other: ExecLimits | None) -> ExecLimits:
    """Limits that fit both phases, for the cgroup until the compile step is over."""
    if other is None:
        return limits
    return ExecLimits(
        **{name: max(value, getattr(other, name)) for name, value in limits.model_dump().items()}
    )


def _file_args(spec: ExecSpec, runtime: Runtime) -> tuple[list[str], dict[int, str]]:
    """bwrap arguments that put the job's files into the work dir, and the fds they read."""
    check_file_names(list(spec.files), runtime.entry_file)
    files = {runtime.entry_file: spec.code, **spec.files}
    args: list[str] = []
    contents: dict[int, str] = {}
    made_dirs: set[str] = set()
    for name, content in files.items():
        path = PurePosixPath(name)
        for parent in reversed(path.parents[:-1]):
            if str(parent) not in made_dirs:
                made_dirs.add(str(parent))
                args += ["--dir", f"{WORK_DIR}/{parent}"]
        # Written by bwrap from a memfd straight into the fresh tmpfs: no host-side job dir
        # exists, so there is nothing to plant a symlink in (Judge0's CVE-2024-28185).
        fd = os.memfd_create(f"crucible-{path.name}", 0)
        contents[fd] = content
        args += ["--file", str(fd), f"{WORK_DIR}/{name}"]
    return args, contents


def _system_dirs() -> list[str]:
    """Read-only system dirs only: no /root, /home, /var or /etc of the host."""
    args = ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "sbin", "lib", "lib64"):
        if Path(f"/{link}").exists():  # merged /usr: each is a symlink into /usr
            args += ["--symlink", f"usr/{link}", f"/{link}"]
    if Path("/etc/ld.so.cache").exists():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return args


def _bwrap_argv(
    limits: ExecLimits,
    file_args: list[str],
    seccomp_fd: int,
    command: list[str],
    caps: tuple[str, ...] = (),
) -> list[str]:
    env = [arg for key, value in _SANDBOX_ENV.items() for arg in ("--setenv", key, value)]
    disk_bytes = str(limits.disk_mb * _MIB)
    shm_bytes = str(min(_SHM_MB, limits.disk_mb) * _MIB)
    return [
        _tool("bwrap"),
        # New user, pid, net, ipc, uts and cgroup namespaces: no network but a lone loopback.
        "--unshare-all", "--unshare-user",
        "--disable-userns",  # and no nested user namespace, where capabilities come back
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into a terminal of ours
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--cap-drop", "ALL", *(arg for cap in caps for arg in ("--cap-add", cap)),
        "--clearenv", *env,  # nothing of the worker's environment (credentials) leaks in
        "--hostname", "sandbox",
        *_system_dirs(),
        "--proc", "/proc",
        "--dev", "/dev",
        # Fresh per job: nothing in /dev/shm or /tmp is shared with another job.
        "--size", shm_bytes, "--tmpfs", "/dev/shm",
        "--size", disk_bytes, "--tmpfs", "/tmp",
        "--size", disk_bytes, "--tmpfs", WORK_DIR,
        *file_args,
        # Everything else read-only: bwrap's root tmpfs is otherwise writable and unsized.
        "--remount-ro", "/dev", "--remount-ro", "/",
        "--seccomp", str(seccomp_fd),
        "--chdir", WORK_DIR,
        *command,
    ]  # fmt: skip


def _argv(
    limits: ExecLimits, file_args: list[str], seccomp_fd: int, command: list[str]
) -> list[str]:
    enter = _ENTER.format(
        nofile=_NOFILE,
        # A backstop per process, a second above the limit: the cgroup watcher, which counts
        # all of the job's processes together, normally ends the job first.
        cpu_s=math.ceil(limits.cpu_time_s) + 1,
        file_blocks=limits.disk_mb * _MIB // _ULIMIT_BLOCK_BYTES,
    )
    setpriv = [_tool("setpriv"), *_SETPRIV_FLAGS]
    return [
        *_DEFAULT_SIGNALS,
        "/bin/sh",
        "-c",
        enter,
        "sh",
        *setpriv,
        *_bwrap_argv(limits, file_args, seccomp_fd, command),
    ]


def _announced(command: list[str], started_fd: int) -> list[str]:
    """`command`, once the sandbox is built: first a byte on `started_fd`, which it then
    closes, so that the program never holds it (bash: dash's redirections take one digit)."""
    announce = f'printf R >&{started_fd} && exec {started_fd}>&- && exec "$@"'
    return ["/usr/bin/bash", "--noprofile", "--norc", "-c", announce, "crucible", *command]


def _said_started(started_fd: int) -> bool:
    """Whether the sandbox said it was built (read once its process has ended)."""
    os.set_blocking(started_fd, False)
    try:
        return os.read(started_fd, 1) == b"R"
    except BlockingIOError:
        return False


def _dir_sizes(limits: ExecLimits) -> DirSizes:
    return DirSizes(disk_mb=limits.disk_mb, shm_mb=min(_SHM_MB, limits.disk_mb))


def _zygote_job(spec: ExecSpec, runtime: Runtime) -> ZygoteJob:
    check_file_names(list(spec.files), runtime.entry_file)
    limits = spec.limits
    return ZygoteJob(
        entry=runtime.entry_file,
        args=spec.args,
        files={runtime.entry_file: spec.code, **spec.files},
        nofile=_NOFILE,
        cpu_s=math.ceil(limits.cpu_time_s) + 1,  # the same backstop as the classic path's
        file_bytes=limits.disk_mb * _MIB,
    )


def _zygote_argv(
    control_fd: int, job_filter_fd: int, seccomp_fd: int, python_main_fd: int, entries_fd: int
) -> list[str]:
    python = RUNTIMES["python"]
    # `-`: the program comes on stdin, so no file of ours shows in the sandbox.
    fds = (control_fd, job_filter_fd, python_main_fd, entries_fd)
    command = [python.interpreter, *python.flags, "-", *map(str, fds), python.entry_file]
    return [
        *_DEFAULT_SIGNALS,
        _tool("setpriv"),
        *_SETPRIV_FLAGS,
        *_bwrap_argv(_ZYGOTE_LIMITS, [], seccomp_fd, command, caps=_ZYGOTE_CAPS),
    ]


async def _spawn_whole(command: Command, cgroup: JobCgroup) -> asyncio.subprocess.Process:
    """Start `command`; a cancel meanwhile lets it start, then kills it as a job is killed.

    asyncio's own clean-up of a subprocess cancelled while starting could wait for ever on
    one that was joining its cgroup.
    """
    starting = asyncio.ensure_future(spawn(command))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        process = await starting
        await cgroup.kill()
        with suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise


@cache
def _tool(name: str) -> str:
    """The absolute path of a host tool, found once on the worker's PATH."""
    path = shutil.which(name)
    if path is None:
        raise SandboxUnavailableError(f"{name} not found: apt-get install {_PACKAGES[name]}")
    return path


def _check_host() -> None:
    """The tools, cgroups and interpreters a bwrap sandbox needs are all here."""
    for tool in _PACKAGES:
        _tool(tool)
    check_cgroups()
    # coreutils 8.31 (2019) and newer; Ubuntu 20.04's 8.30 has no --default-signal.
    if subprocess.run([*_DEFAULT_SIGNALS, "true"], capture_output=True, check=False).returncode:
        raise SandboxUnavailableError(
            f"{' '.join(_DEFAULT_SIGNALS)} is not supported: coreutils 8.31 or newer needed"
        )
    if "python" not in available_runtimes():
        raise SandboxUnavailableError(
            f"{RUNTIMES['python'].interpreter} missing: apt-get install python3"
        )


class BwrapSettings(BaseSettings):
    """`CRUCIBLE_BWRAP_*`."""

    model_config = SettingsConfigDict(env_prefix="CRUCIBLE_BWRAP_")

    fork_server: bool = True


@register("bwrap")
class BwrapSandbox:
    """Each job in fresh bubblewrap namespaces and its own cgroup.

    With the fork server (the default; `CRUCIBLE_BWRAP_FORK_SERVER=0` turns it off), Python
    jobs run through it; other languages, and Python where it cannot start, take the classic
    path.
    """

    name = "bwrap"

    def __init__(self, fork_server: bool | None = None, python_entries: Sequence[str] = ()) -> None:
        """`python_entries`: Python programs that jobs often are (crucible eval's runner), which
        the fork server compiles once for them."""
        if fork_server is None:
            fork_server = BwrapSettings().fork_server
        self._fork_server = (
            ForkServer(_zygote_argv, _dir_sizes(ExecLimits()), python_entries)
            if fork_server
            else None
        )

    @property
    def fast_path(self) -> bool:
        """True while Python jobs run through a live fork server."""
        return self._fork_server is not None and self._fork_server.alive

    async def check(self) -> None:
        _check_host()
        await asyncio.to_thread(sweep_stale)  # what workers that died left behind

        async def ignore(chunk: OutputChunk) -> None:
            pass

        probe = await self.run(ExecSpec(job_id="probe", language="python", code="print(1)"), ignore)
        if probe.verdict is not Verdict.ACCEPTED or probe.stdout != "1\n":
            raise SandboxUnavailableError(
                f"a probe job failed in bubblewrap ({probe.verdict}): {probe.reason or ''} "
                f"{probe.stderr.strip()}"
            )

    async def close(self) -> None:
        if self._fork_server is not None:
            await self._fork_server.close()

    async def settle(self) -> None:
        """Until the cgroups of the jobs that ended are removed (the fork server's go later)."""
        if self._fork_server is not None:
            await self._fork_server.settle()

    def runtimes(self) -> list[RuntimeInfo]:
        return [
            RuntimeInfo(language=r.language, version=r.version())
            for r in available_runtimes().values()
        ]

    async def run(self, spec: ExecSpec, on_output: OutputSink) -> ExecResult:
        runtime = available_runtimes().get(spec.language)
        if runtime is None:
            return ExecResult(
                verdict=Verdict.INTERNAL_ERROR,
                reason=f"{spec.language} is not installed on this worker",
            )
        if runtime.forkable and self._fork_server is not None:
            job, sizes = _zygote_job(spec, runtime), _dir_sizes(spec.limits)
            forked = await self._fork_server.run(job, sizes, spec, on_output)
            if forked is not None:
                return forked
        return await self._run_classic(spec, runtime, on_output)

    async def _run_classic(
        self, spec: ExecSpec, runtime: Runtime, on_output: OutputSink
    ) -> ExecResult:
        file_args, contents = _file_args(spec, runtime)
        filter_fd = seccomp_fd()
        # Compiled languages report the end of their compile step through this pipe.
        phase_read: int | None = None
        phase_write: int | None = None
        if runtime.compiled:
            phase_read, phase_write = os.pipe()
        started_read, started_write = os.pipe()  # the sandbox says it was built (below)
        cgroup: JobCgroup | None = None
        try:
            for fd, content in contents.items():
                os.write(fd, content.encode())
                os.lseek(fd, 0, os.SEEK_SET)
            compile_limits = COMPILE_LIMITS if runtime.compiled else None
            widest = _widest(spec.limits, compile_limits)
            cgroup = JobCgroup.create(spec.job_id, widest)
            inner = _announced(runtime.argv(spec.args, phase_write), started_write)
            command = Command(
                argv=_argv(widest, file_args, filter_fd, inner),
                env={"CRUCIBLE_CGROUP_PROCS": " ".join(map(str, cgroup.procs_files))},
                pass_fds=[
                    *contents,
                    filter_fd,
                    started_write,
                    *([phase_write] if phase_write else []),
                ],
            )
            process = await _spawn_whole(command, cgroup)
            phase, phase_read = phase_read, None  # execute() owns it now
            return await execute(
                process,
                spec.stdin,
                spec.limits,
                cgroup,
                on_output,
                lambda: _said_started(started_read),
                compile_limits,
                phase,
            )
        finally:
            for leftover in (*contents, filter_fd, phase_read, phase_write):
                if leftover is not None:
                    os.close(leftover)
            os.close(started_read)
            os.close(started_write)
            if cgroup is not None:
                await cgroup.kill()  # a start cancelled half-way may have left a process in it
                cgroup.remove()
