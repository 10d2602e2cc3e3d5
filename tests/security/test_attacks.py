"""Hostile jobs against the sandbox. Each attack prints BLOCKED when the sandbox stops it and
ESCAPED when it gets through, so a failing sandbox is detected, not just a crashing attack.

Attacks write markers and never delete; mounts target a job-local dir, never the host's /tmp.
"""

from __future__ import annotations

import asyncio
import os
import platform
import uuid
from pathlib import Path

import pytest

from sandbox import ExecLimits, ExecResult, ExecSpec, OutputChunk, Sandbox, Verdict
from tests.sse_client import run_job
from tests.stack import Stack

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="syscall numbers below are x86_64's"
)

PRELUDE = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def syscall(nr, *args):
    result = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return result, ctypes.get_errno()
def verdict(escaped):
    print("ESCAPED" if escaped else "BLOCKED")
def in_child(attack):
    # True if attack() returned 0 in a child process (which a filter may kill).
    pid = os.fork()
    if pid == 0:
        os._exit(0 if attack() == 0 else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
def int80_unshare_newuser():
    import mmap
    # mov eax, 310 (i386 unshare); mov ebx, CLONE_NEWUSER; int 0x80; ret
    code = bytes.fromhex("b836010000" "bb00000010" "cd80" "c3")
    memory = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    memory.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    return ctypes.CFUNCTYPE(ctypes.c_int32)(address)()
"""

# name -> code; the code decides BLOCKED or ESCAPED itself.
SYSCALL_ATTACKS = {
    "mount-tmpfs": "os.mkdir('m')\nverdict(libc.mount(b'none', b'm', b'tmpfs', 0, None) == 0)",
    "unshare-user": "verdict(syscall(272, 0x10000000)[0] == 0)",
    "unshare-mount": "verdict(syscall(272, 0x00020000)[0] == 0)",
    "clone-newuser": "verdict(syscall(56, 0x10000000 | 17, 0, 0, 0, 0)[0] > 0)",
    "setns": "fd = os.open('/proc/self/ns/net', os.O_RDONLY); verdict(syscall(308, fd, 0)[0] == 0)",
    "ptrace-traceme": "verdict(syscall(101, 0, 0, 0, 0)[0] == 0)",
    "process-vm-readv": "verdict(syscall(310, os.getppid(), 0, 0, 0, 0, 0)[1] != errno.EPERM)",
    "io-uring": "verdict(syscall(425, 8, 0)[0] >= 0)",
    "bpf": "verdict(syscall(321, 0, 0, 0)[1] != errno.EPERM)",
    "keyctl": "verdict(syscall(250, 0, 0, 0, 0, 0)[1] != errno.EPERM)",
    "add-key": "verdict(syscall(248, 0, 0, 0, 0, 0)[1] != errno.EPERM)",
    "perf-event-open": "verdict(syscall(298, 0, 0, -1, -1, 0)[1] != errno.EPERM)",
    "userfaultfd": "verdict(syscall(323, 0)[0] >= 0)",
    "init-module": "verdict(syscall(175, 0, 0, 0)[1] != errno.EPERM)",
    "kexec-load": "verdict(syscall(246, 0, 0, 0, 0)[1] != errno.EPERM)",
    "reboot": "verdict(syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0)[1] != errno.EPERM)",
    "chroot": "verdict(libc.chroot(b'/work') == 0 or ctypes.get_errno() != errno.EPERM)",
    "pivot-root": "verdict(syscall(155, 0, 0)[1] != errno.EPERM)",
    "open-by-handle-at": "verdict(syscall(304, 0, 0, 0)[1] != errno.EPERM)",
    "swapon": "verdict(syscall(167, 0, 0)[1] != errno.EPERM)",
    "setuid-root": "verdict(syscall(105, 0)[0] == 0 and os.getuid() == 0)",
    "sethostname": "verdict(libc.sethostname(b'pwned', 5) == 0)",
    "vsock-socket": "verdict(syscall(41, 40, 1, 0)[0] >= 0)",
    "inotify-init": "verdict(syscall(253)[0] >= 0 or syscall(294, 0)[0] >= 0)",
    "inotify-add-watch": "verdict(syscall(254, 0, 0, 0)[1] != errno.EPERM)",
    "fanotify-init": "verdict(syscall(300, 0x200, 0)[0] >= 0)",
    "mq-open": "verdict(libc.mq_open(b'/crucible-q', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0)",
    "modify-ldt": "verdict(syscall(154, 0, 0, 0)[1] != errno.EPERM)",
    "memfd-secret": "verdict(syscall(447, 0)[0] >= 0)",
    # Another process's limits (here pid 1: the Docker keeper, a namespace's init), set to
    # what they are: a change would let the kernel kill it at a limit the job chose.
    "prlimit-of-pid-1": (
        "import resource\n"
        "try:\n"
        "    now = resource.prlimit(1, resource.RLIMIT_NOFILE)\n"
        "    resource.prlimit(1, resource.RLIMIT_NOFILE, now)\n"
        "    verdict(True)\n"
        "except OSError:\n"
        "    verdict(False)"
    ),
    # The 32-bit ABIs, which a filter written for x86_64's syscall numbers might not see:
    # in a child, which the filter kills; ESCAPED only if unshare worked there.
    "i386-int80-unshare": "verdict(in_child(int80_unshare_newuser))",
    "x32-unshare": "verdict(in_child(lambda: syscall(0x40000000 | 272, 0x10000000)[0]))",
}

HOST_FILE = str(Path(__file__).resolve())  # readable on the host; a sandbox must not reach it
FILESYSTEM_ATTACKS = {
    "write-root": "verdict(can_write('/escape-marker'))",
    "write-usr": "verdict(can_write('/usr/escape-marker'))",
    "write-dev": "verdict(can_write('/dev/escape-marker'))",
    "write-proc-sys": "verdict(can_write('/proc/sys/kernel/hostname'))",
    "read-host-secrets": "verdict(any(os.path.exists(p) for p in HOST_PATHS) or can_read(SHADOW))",
    "dev-block-devices": "verdict(bool(set(os.listdir('/dev')) - PLAIN_DEVICES))",
    "proc-host-processes": "verdict(len([p for p in os.listdir('/proc') if p.isdigit()]) > 8)",
    "proc-environ-of-init": "verdict(any(s in read_bytes('/proc/1/environ') for s in LEAKS))",
    "symlink-to-host-file": f"os.symlink({HOST_FILE!r}, 'link')\nverdict(can_read('link'))",
    "setuid-binary": "verdict(run_ok(['/usr/bin/su', '-c', 'id -u']) == '0')",
    "nested-bwrap": "verdict(run_ok(['/usr/bin/bwrap', '--ro-bind', '/', '/', 'id', '-u']) != '')",
}
PRELUDE += """
import subprocess
# Paths that exist on the host, never in a sandbox (each backend's image has its own /etc).
HOST_PATHS = ['/root/.pyenv', '/work/main', '/var/run/docker.sock', '/var/lib/docker',
              '/sys/fs/cgroup/memory/crucible', '/etc/docker']
SHADOW = '/etc/shadow'
LEAKS = [b'CRUCIBLE', b'NATS', b'PASSWORD', b'OTEL', b'/root', b'/work/main']
PLAIN_DEVICES = {'null', 'zero', 'full', 'random', 'urandom', 'tty', 'shm', 'pts', 'ptmx',
                 'fd', 'stdin', 'stdout', 'stderr', 'core', 'console', 'mqueue'}
def can_write(path):
    try:
        with open(path, 'w') as f:
            f.write('x')
        return True
    except OSError:
        return False
def can_read(path):
    try:
        return open(path).read() != ''
    except OSError:
        return False
def read_bytes(path):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except PermissionError:  # unreadable leaks nothing (the fork server's init is undumpable)
        return b''
def run_ok(argv):
    try:
        done = subprocess.run(argv, input='', capture_output=True, text=True, timeout=5)
    except OSError:
        return ''
    return done.stdout.strip() if done.returncode == 0 else ''
"""


async def run(sandbox: Sandbox, code: str, **limits: float) -> ExecResult:
    async def ignore(chunk: OutputChunk) -> None:
        pass

    spec = ExecSpec(job_id="j-attack", language="python", code=code, limits=ExecLimits(**limits))
    return await sandbox.run(spec, ignore)


def assert_blocked(result: ExecResult) -> None:
    assert "ESCAPED" not in result.stdout, result
    assert "BLOCKED" in result.stdout, result  # the attack really ran to its end


@pytest.mark.parametrize("code", SYSCALL_ATTACKS.values(), ids=SYSCALL_ATTACKS.keys())
async def test_syscall_attacks_are_refused(sandbox: Sandbox, code: str) -> None:
    assert_blocked(await run(sandbox, PRELUDE + code))


@pytest.mark.parametrize("code", FILESYSTEM_ATTACKS.values(), ids=FILESYSTEM_ATTACKS.keys())
async def test_filesystem_and_proc_attacks_fail(sandbox: Sandbox, code: str) -> None:
    assert_blocked(await run(sandbox, PRELUDE + code))
    assert not Path("/escape-marker").exists() and not Path("/usr/escape-marker").exists()


async def test_host_loopback_services_are_unreachable(sandbox: Sandbox) -> None:
    # Stand-ins for NATS, the gateway and a Docker API on the host's loopback.
    servers = [await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0) for _ in range(3)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    code = PRELUDE + (
        "import socket\n"
        f"ports = {ports}\n"
        "reached = []\n"
        "for port in ports:\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=1)\n"
        "        reached.append(port)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        "verdict(bool(reached))"
    )
    try:
        result = await run(sandbox, code)
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
    assert_blocked(result)
    assert "['lo']" in result.stdout


async def test_the_workers_environment_and_credentials_do_not_leak(sandbox: Sandbox) -> None:
    os.environ["CRUCIBLE_NATS_PASSWORD"] = "hunter2-marker"
    try:
        code = PRELUDE + (
            "import glob\n"
            "seen = str(dict(os.environ))\n"
            "for path in glob.glob('/proc/*/environ'):\n"
            "    try:\n"
            "        seen += open(path, 'rb').read().decode(errors='replace')\n"
            "    except OSError:\n"
            "        pass\n"
            "verdict('hunter2-marker' in seen or 'CRUCIBLE' in seen)"
        )
        assert_blocked(await run(sandbox, code))
    finally:
        del os.environ["CRUCIBLE_NATS_PASSWORD"]


async def test_concurrent_jobs_cannot_see_each_other(sandbox: Sandbox) -> None:
    writer = (
        "import os, time\n"
        "for d in ('/work', '/tmp', '/dev/shm'):\n"
        "    open(os.path.join(d, 'job-a-marker'), 'w').write('a')\n"
        "print('written', flush=True)\n"
        "time.sleep(3)\n"
    )
    reader = PRELUDE + (
        "import time, glob\n"
        "time.sleep(1)\n"
        "found = [p for d in ('/work', '/tmp', '/dev/shm') for p in glob.glob(d + '/*marker*')]\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "procs = [open(f'/proc/{p}/cmdline', 'rb').read() for p in pids]\n"
        "verdict(bool(found) or any(b'job-a' in c or b'time.sleep(3)' in c for c in procs))"
    )
    first, second = await asyncio.gather(run(sandbox, writer), run(sandbox, reader))
    assert "written" in first.stdout
    assert_blocked(second)


async def test_a_job_cannot_reach_another_jobs_terminal(sandbox: Sandbox) -> None:
    # Job A writes a secret to a pty of its own; job B tries every pty it can see, to read
    # it and to type into it (what A's program would then read as its input).
    owner = (
        "import os, pty, select, time\n"
        "master, slave = pty.openpty()\n"
        "os.write(master, b'secret-of-job-a\\n')\n"
        "print('opened', os.ttyname(slave), flush=True)\n"
        "time.sleep(3)\n"
        "typed = os.read(master, 4096) if select.select([master], [], [], 0)[0] else b''\n"
        "print('typed into A' if b'typed-by-job-b' in typed else 'nothing typed')\n"
    )
    prober = PRELUDE + (
        "import time\n"
        "time.sleep(1)\n"
        "read = b''\n"
        "for name in os.listdir('/dev/pts'):\n"
        "    if name.isdigit():\n"
        "        try:\n"
        "            fd = os.open('/dev/pts/' + name, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)\n"
        "        except OSError:\n"
        "            continue\n"
        "        time.sleep(0.1)\n"
        "        try:\n"
        "            read += os.read(fd, 4096)\n"
        "        except OSError:\n"
        "            pass\n"
        "        os.write(fd, b'typed-by-job-b\\n')\n"
        "verdict(b'secret-of-job-a' in read)"
    )
    first, second = await asyncio.gather(run(sandbox, owner), run(sandbox, prober))
    assert "opened /dev/pts/" in first.stdout, first
    assert "nothing typed" in first.stdout, first
    assert_blocked(second)


async def test_kill_everything_only_kills_the_job(sandbox: Sandbox) -> None:
    result = await run(
        sandbox, PRELUDE + "import signal\nos.kill(-1, signal.SIGKILL)\nverdict(False)"
    )
    assert result.verdict in (Verdict.ACCEPTED, Verdict.RUNTIME_ERROR)
    assert os.getpid() > 0 and Path(f"/proc/{os.getpid()}").exists()  # we, the host, survive


@pytest.mark.parametrize(
    ("code", "limits", "verdict"),
    [
        (
            "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
            {"processes": 16, "wall_time_s": 2},
            Verdict.TIME_LIMIT_EXCEEDED,
        ),
        (
            "x = []\nwhile True: x.append(bytearray(2**20))",
            {"memory_mb": 64},
            Verdict.MEMORY_LIMIT_EXCEEDED,
        ),
        (
            "import sys\nwhile True: sys.stdout.write('A' * 65536)",
            {"output_bytes": 100_000},
            Verdict.OUTPUT_LIMIT_EXCEEDED,
        ),
        ("while True: pass", {"cpu_time_s": 1, "wall_time_s": 10}, Verdict.TIME_LIMIT_EXCEEDED),
        ("import time\ntime.sleep(60)", {"wall_time_s": 1}, Verdict.TIME_LIMIT_EXCEEDED),
        (
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
            {"wall_time_s": 1},
            Verdict.TIME_LIMIT_EXCEEDED,
        ),
    ],
    ids=["fork-bomb", "memory-bomb", "output-flood", "cpu-spin", "sleep", "sigterm-ignored"],
)
async def test_resource_attacks_end_in_their_verdict(
    sandbox: Sandbox, code: str, limits: dict[str, float], verdict: Verdict
) -> None:
    result = await run(sandbox, code, **limits)
    assert result.verdict is verdict, result


async def test_memory_a_job_leaves_in_the_kernel_does_not_burden_later_jobs(
    sandbox: Sandbox,
) -> None:
    # Negative dentries (stat()s of names that do not exist) stay charged to the memory
    # cgroup that made them after the job is gone: ~100 MB in a couple of seconds.
    hoarder = (
        "import os, time\n"
        "end, n = time.monotonic() + 2.5, 0\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        os.stat(f'/usr/lib/crucible-absent-name-of-some-length-{n}')\n"
        "    except FileNotFoundError:\n"
        "        pass\n"
        "    n += 1\n"
        "print('stats', n)\n"
    )
    for _ in range(2):
        assert "stats" in (await run(sandbox, hoarder, wall_time_s=10)).stdout
    # Whichever sandbox the next jobs get: each must get its whole cap, and only its own peak.
    for _ in range(4):
        result = await run(sandbox, "print('small')", memory_mb=32)
        assert result.verdict is Verdict.ACCEPTED, result
        assert result.memory_peak_mb < 16, result


@pytest.mark.parametrize(
    ("language", "code", "exit_code"),
    [
        ("python", "import sys\nsys.exit(125)", 125),
        ("python", "import sys\nsys.stderr.write('bwrap: Can\\'t mount\\n')\nsys.exit(1)", 1),
        ("bash", "exit 125", 125),
        ("bash", "echo 'bwrap: Creating new namespace failed' >&2; exit 1", 1),
    ],
    ids=["python-125", "python-bwrap-words", "bash-125", "bash-bwrap-words"],
)
async def test_a_job_cannot_pass_its_failure_off_as_the_platforms(
    sandbox: Sandbox, language: str, code: str, exit_code: int
) -> None:
    # The statuses and words our own set-up uses when it fails: from a job, they are its own.
    async def ignore(chunk: OutputChunk) -> None:
        pass

    result = await sandbox.run(ExecSpec(job_id="j-blame", language=language, code=code), ignore)
    assert result.verdict is Verdict.RUNTIME_ERROR, result
    assert result.exit_code == exit_code, result


async def test_a_sandbox_that_cannot_be_set_up_is_the_platforms_failure(sandbox: Sandbox) -> None:
    # Files that cannot both exist (`a` and `a/b`): writing them fails before the program.
    async def ignore(chunk: OutputChunk) -> None:
        pass

    spec = ExecSpec(
        job_id="j-setup", language="python", code="print('ran')", files={"a": "x", "a/b": "y"}
    )
    result = await sandbox.run(spec, ignore)
    assert result.verdict is Verdict.INTERNAL_ERROR, result
    assert "ran" not in result.stdout, result


async def test_disk_fill_stops_at_the_cap_and_the_host_disk_is_untouched(sandbox: Sandbox) -> None:
    before = os.statvfs("/").f_bavail
    code = PRELUDE + (
        "try:\n"
        "    with open('fill', 'wb') as f:\n"
        "        for _ in range(1024):\n"
        "            f.write(b'x' * 2**20)\n"
        "            f.flush()\n"
        "    verdict(True)\n"
        "except OSError as e:\n"
        "    print(e.errno == errno.ENOSPC or e.errno == errno.EFBIG)\n"
        "    verdict(False)"
    )
    result = await run(sandbox, code, disk_mb=16)
    assert_blocked(result)
    block = os.statvfs("/").f_frsize
    assert (before - os.statvfs("/").f_bavail) * block < 64 * 2**20  # nothing landed on disk


async def test_a_surviving_daemon_is_killed(sandbox: Sandbox) -> None:
    marker = f"crucible-daemon-{uuid.uuid4().hex}"  # in its argv, so the host can look for it
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/usr/bin/python3', ['python3', '-c',"
        " 'import time\\nwhile True: time.sleep(0.05)', "
        f"{marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('daemonised')\n"
    )
    result = await run(sandbox, code)
    assert "daemonised" in result.stdout, result
    await asyncio.sleep(1)  # the Docker backend removes used containers in the background
    survivors = [
        pid for pid in os.listdir("/proc") if pid.isdigit() and marker.encode() in _cmdline(pid)
    ]
    assert survivors == []


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def test_invalid_utf8_output_is_replaced_not_fatal(sandbox: Sandbox) -> None:
    result = await run(sandbox, "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe bad\\n')")
    assert result.verdict is Verdict.ACCEPTED
    assert result.stdout == "ok \ufffd\ufffd bad\n"


@pytest.mark.parametrize(
    "name", ["../x.py", "/etc/cron.d/x", "a/../../x", "./x", "a//b", "main.py"]
)
async def test_symlink_and_traversal_file_names_are_refused(sandbox: Sandbox, name: str) -> None:
    async def ignore(chunk: OutputChunk) -> None:
        pass

    spec = ExecSpec(job_id="j-attack", language="python", code="print(1)", files={name: "x"})
    with pytest.raises(ValueError):
        await sandbox.run(spec, ignore)


def test_after_attacks_the_stack_still_serves_jobs(stack: Stack) -> None:
    for code, limits in [
        (
            "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
            {"processes": 16, "wall_time_s": 2},
        ),
        ("x = []\nwhile True: x.append(bytearray(2**20))", {"memory_mb": 64}),
        (PRELUDE + SYSCALL_ATTACKS["unshare-user"], {}),
    ]:
        finished = run_job(stack, {"language": "python", "code": code, "limits": limits})
        assert finished["verdict"] != "internal_error"
        assert "ESCAPED" not in finished["stdout"]
    assert run_job(stack, {"language": "python", "code": "print(6 * 7)"})["stdout"] == "42\n"
