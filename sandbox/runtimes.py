"""The languages a sandbox can run: where the interpreter is and how a program is started."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sandbox.models import ExecLimits

_VERSION_TIMEOUT_S = 10
BINARY = "/tmp/main"  # where a compiled program is written, inside the sandbox
# The compiler's own limits, whatever the job asks for its program: compilers need more
# memory and time than most programs, and a job must not buy a bigger compile with its own.
COMPILE_LIMITS = ExecLimits(
    wall_time_s=20, cpu_time_s=20, memory_mb=768, processes=32, output_bytes=65536, disk_mb=64
)
# Between compiling and running, the wrapper writes one byte here, then closes it, so the
# worker knows which phase ended; the program itself never holds this descriptor.
_COMPILED_MARK = 'printf c >&{fd} && exec {fd}>&- && exec {binary} "$@"'

_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Runtime:
    language: str
    interpreter: str
    entry_file: str  # the job's `code` is written here, inside the work dir
    flags: tuple[str, ...]
    compiled: bool = False  # interpreter is a compiler: `flags` compile, then BINARY runs
    link_flags: tuple[str, ...] = ()  # after the source file, where the linker wants them
    # Runs in an interpreter already started: bwrap's fork server (zygote.py), Docker's keeper.
    forkable: bool = False

    def argv(self, args: list[str], phase_fd: int | None = None) -> list[str]:
        """The command inside the sandbox; compiled languages report the phase on `phase_fd`."""
        if not self.compiled:
            return [self.interpreter, *self.flags, self.entry_file, *args]
        if phase_fd is None:
            raise ValueError(f"{self.language} needs a phase fd to report its compile step")
        compile_step = " ".join(self.compile_argv())
        script = f"{compile_step} || exit $?; " + _COMPILED_MARK.format(fd=phase_fd, binary=BINARY)
        # bash, not dash: dash's redirections take single-digit descriptors only.
        return ["/usr/bin/bash", "--noprofile", "--norc", "-c", script, "main", *args]

    def compile_argv(self) -> list[str]:
        """The compiler's command line: the job's code in, BINARY out."""
        return [self.interpreter, *self.flags, "-o", BINARY, self.entry_file, *self.link_flags]

    @cache  # noqa: B019 - runtimes are module-level singletons; the cache lives as long
    def version(self) -> str:
        """The interpreter's version (e.g. `3.11.2`), asked of the interpreter itself."""
        out = subprocess.run(
            [self.interpreter, "--version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_S,
            check=True,
        )
        return parse_version(out.stdout or out.stderr)


def parse_version(text: str) -> str:
    """`3.11.2` from `Python 3.11.2`, `GNU bash, version 5.2.15(1)-release ...`, `v20.1.0`."""
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    found = _VERSION.search(first_line)
    return found.group(0) if found else first_line


RUNTIMES: dict[str, Runtime] = {
    "python": Runtime(
        language="python",
        # Debian's interpreter, never a pyenv shim: the shim lives under /root, which jobs
        # must not see, and costs 70-100 ms a start.
        interpreter="/usr/bin/python3",
        entry_file="main.py",
        # -E -s: ignore PYTHON* variables and user site-packages; -u: unbuffered, so output
        # streams as it is printed. Not -I: it would drop the script's dir from sys.path,
        # and a job's helper files must be importable.
        flags=("-E", "-s", "-u"),
        forkable=True,
    ),
    "javascript": Runtime(
        language="javascript",
        interpreter="/usr/bin/node",
        entry_file="main.js",
        flags=(),
    ),
    "bash": Runtime(
        language="bash",
        interpreter="/usr/bin/bash",
        entry_file="main.sh",
        flags=("--noprofile", "--norc"),
    ),
    "c": Runtime(
        language="c",
        interpreter="/usr/bin/gcc",
        entry_file="main.c",
        flags=("-std=c17", "-O2", "-pipe"),
        compiled=True,
        link_flags=("-lm",),
    ),
    "cpp": Runtime(
        language="cpp",
        interpreter="/usr/bin/g++",
        entry_file="main.cpp",
        flags=("-std=c++17", "-O2", "-pipe"),
        compiled=True,
    ),
}


@cache  # asked per job; an interpreter does not come or go while a worker runs
def available_runtimes() -> dict[str, Runtime]:
    """The runtimes whose interpreter is installed on this host."""
    return {name: rt for name, rt in RUNTIMES.items() if Path(rt.interpreter).exists()}


LANGUAGES: frozenset[str] = frozenset(RUNTIMES)
