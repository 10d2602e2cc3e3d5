"""The languages a sandbox can run: where the interpreter is and how a program is started."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_VERSION_TIMEOUT_S = 10
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Runtime:
    language: str
    interpreter: str
    entry_file: str  # the job's `code` is written here, inside the work dir
    flags: tuple[str, ...]

    def argv(self, args: list[str]) -> list[str]:
        return [self.interpreter, *self.flags, self.entry_file, *args]

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
        first_line = (out.stdout or out.stderr).strip().splitlines()[0]
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
}


def available_runtimes() -> dict[str, Runtime]:
    """The runtimes whose interpreter is installed on this host."""
    return {name: rt for name, rt in RUNTIMES.items() if Path(rt.interpreter).exists()}


LANGUAGES: frozenset[str] = frozenset(RUNTIMES)
