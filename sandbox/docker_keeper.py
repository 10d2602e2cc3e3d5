"""pid 1 of every Docker sandbox: it waits for its job on stdin, runs it, and says how it ended.

This file runs as the container's main process, `python3 -E -s -u -c <this file>` as uid
65534, from the moment the container joins the warm pool; standard library only. The
worker attached to the container's stdin, stdout and stderr before starting it, so a job
costs no call to the engine: per step (a compiled language has two, compile then run) the
worker writes a length, a `marshal` bundle (files, argv, env, stdin, CPU seconds) and a random
token down stdin. The keeper forks the step's program, which writes the files (O_NOFOLLOW |
O_EXCL in the empty tmpfs work dir: no name can be a symlink or overwrite another; Judge0's
CVEs came from following one), takes its stdin as a memfd and its rlimits, and `exec`s the
program. Only then does the keeper read the token, so no program ever has it in memory.

When the program exits, the keeper kills whatever it left running and writes
`MARK + token + status` as the last bytes of stdout and of stderr: the worker knows the step
ended, with its status and all its output, without asking the engine. No job can forge the
mark, since none can learn the token: the keeper is pid 1, which its namespace cannot signal,
and not dumpable, so the job (the same uid) can neither trace it nor read its memory or
descriptors. The container stays up, so the worker reads its cgroup's figures after the step.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import sys
import types

# Not `typing` itself: importing it would slow every container's start by milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

WORK_DIR = "/work"
HEADER_DIGITS = 10  # the bundle's length, zero-padded, before the bundle itself
TOKEN_BYTES = 32  # hex digits of the token, after the bundle
MARK = b"\0"  # then the token, then the status in STATUS_DIGITS digits
STATUS_DIGITS = 3
READY = b"crucible keeper ready\n"  # on stdout once, before any job: the container is warm
# The step never got to its program (no fork, or its set-up failed): a status no program
# can have (0-255, or 128 + N for signal N), so that no job can claim it.
SETUP_FAILED = 999
_STARTED = b"R"  # the forked child's word, on a pipe of the keeper's, that the program starts
_SIGNAL_BASE = 128  # a program killed by signal N is reported as 128 + N, as shells do
_PR_SET_DUMPABLE = 4


def _read_exactly(size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            os._exit(0)  # the worker let go of this container: nothing more will come
        data += chunk
    return data


def _become_program(
    bundle: dict[str, Any], python_main: types.ModuleType, started: int
) -> NoReturn:
    """In the forked child: set the step up, say so on `started` (closed before the program
    runs), and run its program; a failure to set up is exit 1, told by no word on `started`."""
    try:
        # RLIMIT_CPU is per process: SIGXCPU at the soft limit, SIGKILL a second later; the
        # wall clock is enforced from outside, and the cgroup's CPU time read after.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (bundle["cpu_s"], bundle["cpu_s"] + 1))
        os.closerange(3, started)
        os.closerange(started + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        for name, content in bundle["files"].items():
            parent = os.path.dirname(name)
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            os.write(fd, content.encode())
            os.close(fd)
        # stdin travels in the bundle: the container's own stdin is the keeper's alone.
        stdin = os.memfd_create("stdin")
        data = bundle["stdin"].encode()
        while data:
            data = data[os.write(stdin, data) :]
        os.lseek(stdin, 0, os.SEEK_SET)
        os.dup2(stdin, 0)
        os.close(stdin)
        if bundle["entry"] is None:
            # What pid 1 ignores, a program must not inherit ignored (exec keeps SIG_IGN).
            for number in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(number, signal.SIG_DFL)
            os.write(started, _STARTED)  # close-on-exec: the program never holds it
            os.execve(bundle["argv"][0], bundle["argv"], bundle["env"])
        # A Python job in this interpreter, already started with the job's flags: as a
        # fresh one, it has KeyboardInterrupt on SIGINT, the job's environment, and is dumpable.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(bundle["env"])
        _prctl(_PR_SET_DUMPABLE, 1)
        argv, entry = bundle["argv"], bundle["entry"]
        os.write(started, _STARTED)
        os.close(started)
        python_main.run_as_main(os.path.join(WORK_DIR, entry), argv[argv.index(entry) + 1 :])
    except BaseException:
        # The interpreter's own printer: importing `traceback` would slow every keeper's start.
        sys.excepthook(*sys.exc_info())
    os._exit(1)


def _wait_for(program: int) -> int:
    """Reap orphans until the program itself exits; its status, signals as 128 + N."""
    while True:
        pid, status = os.wait()
        if pid == program:
            if os.WIFSIGNALED(status):
                return _SIGNAL_BASE + os.WTERMSIG(status)
            return os.waitstatus_to_exitcode(status)


def _kill_the_rest() -> None:
    """Every other process (all are ours, as pid 1) dies, so none writes after the mark."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        return
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def _mark(token: bytes, status: int) -> None:
    mark = MARK + token + b"%0*d" % (STATUS_DIGITS, status)
    for fd in (1, 2):
        os.set_blocking(fd, True)  # a program may have left the shared pipe non-blocking
        data = mark
        while data:
            data = data[os.write(fd, data) :]


def _prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(f"prctl({option}, {value}) failed")


def _load(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)
    return module


def main() -> NoReturn:
    # pid 1 gets no signal from its own namespace that it has no handler for: none, now.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _prctl(_PR_SET_DUMPABLE, 0)  # before any token comes: nobody of the job can read it
    python_main = _load(sys.argv[1], "python_main")  # the source comes as our argument
    os.chdir(WORK_DIR)
    os.write(1, READY)
    while True:
        bundle = marshal.loads(_read_exactly(int(_read_exactly(HEADER_DIGITS))))
        said, started = os.pipe2(os.O_CLOEXEC)
        try:
            program = os.fork()
        except OSError:
            program = -1
        if program == 0:
            os.close(said)
            _become_program(bundle, python_main, started)
        os.close(started)
        token = _read_exactly(TOKEN_BYTES)  # after the fork: the program never had it
        status = SETUP_FAILED if program < 0 else _wait_for(program)
        _kill_the_rest()  # after which nothing holds the pipe's other end
        if os.read(said, 1) != _STARTED:
            status = SETUP_FAILED
        os.close(said)
        _mark(token, status)


if __name__ == "__main__":
    main()
