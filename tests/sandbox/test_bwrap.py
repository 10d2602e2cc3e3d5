"""The bubblewrap backend against real bubblewrap and real cgroups: verdicts, limits, isolation.

Attacks write markers and never delete anything; a sandbox that fails lets them be seen.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from sandbox import ExecLimits, ExecResult, ExecSpec, OutputChunk, Verdict, create_sandbox
from sandbox.bwrap import BwrapSandbox
from sandbox.cgroups import CGROUP_ROOT, PARENT


async def run(code: str, chunks: list[OutputChunk] | None = None, **fields: Any) -> ExecResult:
    limits = ExecLimits(**fields.pop("limits", {}))

    async def collect(chunk: OutputChunk) -> None:
        if chunks is not None:
            chunks.append(chunk)

    spec = ExecSpec(job_id="j-test", language="python", code=code, limits=limits, **fields)
    sandbox = create_sandbox("bwrap")
    try:
        return await sandbox.run(spec, collect)
    finally:
        await sandbox.close()  # and the fork server's job cgroups are removed by then


_NOBODY = "crucible-nobody"


def _named(name: str) -> list[int]:
    """Processes that gave themselves `name` (PR_SET_NAME), to be found from outside."""
    found = []
    for entry in Path("/proc").iterdir():
        with suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
    return found


def job_cgroups() -> list[str]:
    return sorted(p.name for p in (CGROUP_ROOT / "memory" / PARENT).glob("j-test-*"))


async def test_accepted_with_stdout() -> None:
    result = await run("print('hello')")
    assert result.verdict is Verdict.ACCEPTED
    assert (result.stdout, result.exit_code, result.signal) == ("hello\n", 0, None)
    assert result.wall_time_s > 0 and result.memory_peak_mb > 0


async def test_stdin_files_and_args() -> None:
    result = await run(
        "import sys, helper\nprint(helper.shout(input()), sys.argv[1:])",
        stdin="hi\n",
        files={"helper.py": "def shout(s):\n    return s.upper()\n", "data/x.txt": "x"},
        args=["a", "b"],
    )
    assert result.stdout == "HI ['a', 'b']\n", result.stderr


async def test_runtime_error_keeps_exit_code_and_traceback() -> None:
    result = await run("raise SystemExit(3)")
    assert (result.verdict, result.exit_code) == (Verdict.RUNTIME_ERROR, 3)
    crash = await run("raise ValueError('boom')")
    assert crash.verdict is Verdict.RUNTIME_ERROR and "ValueError: boom" in crash.stderr


async def test_death_by_signal_names_the_signal() -> None:
    result = await run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (result.verdict, result.signal, result.exit_code) == (
        Verdict.RUNTIME_ERROR,
        "SIGSEGV",
        None,
    )


@pytest.mark.parametrize(
    "code",
    [
        "while True: pass",
        "import time\ntime.sleep(100)",
        "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)",  # Piston #196
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(100)",
    ],
    ids=["busy", "sleep", "sigstop", "ignores-sigterm"],
)
async def test_wall_time_limit_ends_any_job(code: str) -> None:
    result = await run(code, limits={"wall_time_s": 1, "cpu_time_s": 5})
    assert result.verdict is Verdict.TIME_LIMIT_EXCEEDED
    assert result.reason and "wall" in result.reason


async def test_cpu_time_limit_counts_all_processes() -> None:
    code = "import os\nfor _ in range(3):\n    os.fork()\nwhile True: pass"
    result = await run(code, limits={"wall_time_s": 20, "cpu_time_s": 1})
    assert result.verdict is Verdict.TIME_LIMIT_EXCEEDED
    assert result.reason and "CPU" in result.reason
    assert result.wall_time_s < 20


async def test_memory_limit() -> None:
    code = "b = bytearray(400 * 2**20)\nb[::4096] = b'x' * len(b[::4096])"
    result = await run(code, limits={"memory_mb": 64})
    assert result.verdict is Verdict.MEMORY_LIMIT_EXCEEDED
    assert result.memory_peak_mb <= 64.5


async def test_output_limit_caps_what_is_kept() -> None:
    result = await run("while True: print('x' * 100)", limits={"output_bytes": 1000})
    assert result.verdict is Verdict.OUTPUT_LIMIT_EXCEEDED
    assert len(result.stdout) + len(result.stderr) <= 1000


async def test_output_arrives_while_the_program_runs() -> None:
    chunks: list[OutputChunk] = []
    seen_before_end: list[int] = []
    code = "import time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.3)"
    task = asyncio.create_task(run(code, chunks))
    while not task.done():
        seen_before_end.append(len(chunks))
        await asyncio.sleep(0.05)
    assert (await task).verdict is Verdict.ACCEPTED
    # Chunks were delivered one by one during the run, not all at its end.
    assert {1, 2} <= set(seen_before_end)
    assert [c.data for c in chunks] == [f"tick {i}\n" for i in range(3)]
    assert [c.offset for c in chunks] == [0, 7, 14]


async def test_disk_is_capped_by_the_tmpfs() -> None:
    code = "f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'x' * 2**20)\n    f.flush()"
    result = await run(code, limits={"disk_mb": 8})
    assert result.verdict is Verdict.RUNTIME_ERROR
    assert "No space left" in result.stderr or "File too large" in result.stderr


async def test_no_network_not_even_the_hosts_loopback() -> None:
    # A server on the host's loopback: a sandbox sharing the host's network would reach it.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = (
        "import socket\n"
        "print(sorted(i[1] for i in socket.if_nameindex()))\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "print('CONNECTED')"
    )
    try:
        result = await run(code)
    finally:
        server.close()
        await server.wait_closed()
    assert result.stdout.splitlines()[0] == "['lo']"
    assert "CONNECTED" not in result.stdout
    assert "ConnectionRefusedError" in result.stderr


async def test_runs_as_nobody_inside_and_outside() -> None:
    code = (
        "import ctypes, os, time\n"
        f"ctypes.CDLL(None).prctl(15, {_NOBODY.encode()!r})\n"  # PR_SET_NAME: to be found
        "print(os.getuid(), os.getgid(), os.getpid(), flush=True)\n"
        "time.sleep(1)"
    )
    chunks: list[OutputChunk] = []
    task = asyncio.create_task(run(code, chunks))
    while "\n" not in "".join(c.data for c in chunks):
        await asyncio.sleep(0.02)
    uid, gid, _ = "".join(c.data for c in chunks).split()
    assert (uid, gid) == ("65534", "65534")
    # Outside, every process of the job's cgroup belongs to uid 65534 too, never root.
    (job,) = _named(_NOBODY)
    cgroup = next(
        line.split(":")[2]
        for line in Path(f"/proc/{job}/cgroup").read_text().splitlines()
        if line.split(":")[1] == "pids"
    )
    procs = (CGROUP_ROOT / "pids" / cgroup.lstrip("/") / "cgroup.procs").read_text().split()
    assert job in map(int, procs)
    assert {Path(f"/proc/{pid}").stat().st_uid for pid in procs} == {65534}
    await task


async def test_nothing_of_the_worker_is_visible() -> None:
    os.environ["CRUCIBLE_TEST_SECRET"] = "s3cret"
    try:
        code = (
            "import os\n"
            "print(dict(os.environ))\n"
            "for p in ['/root', '/work/main', '/tmp/pytest-of-root', '/home', '/var',"
            " '/etc/passwd', '/root/.pyenv']:\n"
            "    print(p, os.path.exists(p))\n"
            "print(os.listdir('/etc'), os.listdir('/tmp') if os.path.exists('/tmp') else None)\n"
            "print(sorted(os.listdir('/proc/self/fd')))"
        )
        result = await run(code)
    finally:
        del os.environ["CRUCIBLE_TEST_SECRET"]
    assert result.verdict is Verdict.ACCEPTED, result.stderr
    assert "s3cret" not in result.stdout
    assert "{'PATH': '/usr/bin:/bin', 'HOME': '/work', 'LANG': 'C.UTF-8', 'PWD': '/work'}" in (
        result.stdout
    )
    for line in result.stdout.splitlines()[1:8]:
        assert line.endswith("False"), line
    assert "['ld.so.cache'] []" in result.stdout  # /tmp: a fresh, empty tmpfs
    assert result.stdout.splitlines()[-1] == "['0', '1', '2', '3']"  # std streams + listdir's own


async def test_a_double_forked_daemon_does_not_survive() -> None:
    marker = f"crucible-daemon-{uuid.uuid4().hex}"  # in its argv, for the host to look for
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(60)', "
        f"{marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('daemon started')\n"
    )
    result = await run(code)
    assert "daemon started" in result.stdout
    assert job_cgroups() == []  # removed, which the kernel allows only once it is empty
    leftovers = [
        pid for pid in os.listdir("/proc") if pid.isdigit() and marker.encode() in _cmdline(pid)
    ]
    assert leftovers == []


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def test_fork_bomb_is_contained() -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = await run(code, limits={"processes": 16, "wall_time_s": 2})
    assert result.verdict is Verdict.TIME_LIMIT_EXCEEDED
    assert job_cgroups() == []


async def test_cancelling_the_run_kills_the_job() -> None:
    chunks: list[OutputChunk] = []
    task = asyncio.create_task(run("import time\nprint('up', flush=True)\ntime.sleep(60)", chunks))
    while not chunks:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job_cgroups() == []


async def test_files_cannot_leave_the_work_dir() -> None:
    for name in ["../escape.py", "/etc/x", "a//b", "main.py"]:
        with pytest.raises(ValueError):
            await run("print(1)", files={name: "x"})
    assert job_cgroups() == []


async def test_check_passes_on_this_machine() -> None:
    await create_sandbox("bwrap").check()


def test_runtimes_report_versions() -> None:
    versions = {r.language: r.version for r in create_sandbox("bwrap").runtimes()}
    assert versions["python"].startswith("3.")
    assert set(versions) == {"python", "javascript", "bash", "c", "cpp"}


async def compiled(language: str, code: str, **limits: float) -> ExecResult:
    async def ignore(chunk: OutputChunk) -> None:
        pass

    spec = ExecSpec(job_id="j-test", language=language, code=code, limits=ExecLimits(**limits))
    return await create_sandbox("bwrap").run(spec, ignore)


async def test_compile_errors_are_compilation_error_with_the_message() -> None:
    result = await compiled("c", "int main(void) { return syntax error; }")
    assert result.verdict is Verdict.COMPILATION_ERROR
    assert "error" in result.stderr and "main.c" in result.stderr


async def test_compiled_programs_get_the_jobs_limits_not_the_compilers() -> None:
    # Compiling takes more time and memory than the program is allowed: both must still work.
    touch = (
        "#include <stdlib.h>\n#include <stdio.h>\n"
        "int main(void) { volatile char *p = malloc(200L << 20);\n"
        "  for (long i = 0; i < (200L << 20); i += 4096) p[i] = 1;\n"
        '  printf("%d\\n", p[4096]); }'
    )
    result = await compiled("c", touch, memory_mb=64, cpu_time_s=0.5)
    assert result.verdict is Verdict.MEMORY_LIMIT_EXCEEDED, result
    spin = await compiled("cpp", "int main() { for (;;) {} }", cpu_time_s=1, wall_time_s=10)
    assert spin.verdict is Verdict.TIME_LIMIT_EXCEEDED and spin.reason == "CPU time limit exceeded"
    assert spin.cpu_time_s < 3  # the program's CPU time, the compiler's not counted


async def test_the_program_cannot_fake_the_compile_phase() -> None:
    # Writing to every fd cannot reach the phase pipe: the wrapper closed it before exec.
    code = (
        "#include <unistd.h>\n#include <stdlib.h>\n"
        'int main(void) { for (int fd = 3; fd < 256; fd++) write(fd, "c", 1); return 3; }'
    )
    result = await compiled("c", code)
    assert (result.verdict, result.exit_code) == (Verdict.RUNTIME_ERROR, 3)


_RUNS_ON = "crucible-runs-on"  # the name a cancelled job gives itself, to be found by


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "classic"])
async def test_a_job_cancelled_as_it_starts_is_killed(fork_server: bool) -> None:
    # Cancels landing while the sandbox is still being set up: the job must not run on (a
    # minute here) outside the reach of the kill, nor leave its cgroup behind (the fork
    # server keeps its cgroups for later jobs: each must be empty).
    sandbox = BwrapSandbox(fork_server=fork_server)
    await sandbox.check()

    async def ignore(chunk: OutputChunk) -> None:
        pass

    code = (
        "import ctypes, time\n"
        f"ctypes.CDLL(None).prctl(15, {_RUNS_ON.encode()!r})\n"  # PR_SET_NAME
        "time.sleep(60)"
    )
    spec = ExecSpec(job_id="j-test", language="python", code=code)
    try:
        for delay_s in (0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.2):
            task = asyncio.create_task(sandbox.run(spec, ignore))
            await asyncio.sleep(delay_s)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
            await sandbox.settle()
            assert job_cgroups() == []
            assert _named(_RUNS_ON) == []
    finally:
        await sandbox.close()


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "classic"])
async def test_a_job_gets_default_signals_from_a_worker_that_ignores_them(
    fork_server: bool,
) -> None:
    """A worker started in the background by a script ignores SIGINT and SIGQUIT, one under
    nohup SIGHUP: its jobs must not inherit that (exec keeps a signal ignored)."""
    ignored = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in ignored}
    sandbox = BwrapSandbox(fork_server=fork_server)  # its fork server starts ignoring them too
    try:
        spec = ExecSpec(
            job_id="j-signals",
            language="python",
            code="import signal\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,\n"
            "      signal.getsignal(signal.SIGQUIT) == signal.getsignal(signal.SIGHUP) == 0)\n"
            "import os\n"
            "os.kill(os.getpid(), signal.SIGINT)",
        )

        async def ignore(chunk: OutputChunk) -> None:
            pass

        result = await sandbox.run(spec, ignore)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        await sandbox.close()
    assert result.stdout == "True True\n", result
    assert (result.exit_code, result.signal) == (None, "SIGINT"), result
