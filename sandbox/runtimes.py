"""The languages a sandbox can run: where the interpreter is and how a program is started."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import cache

_VERSION_TIMEOUT_S = 10


@dataclass(frozen=True)
class Runtime:
    language: str
    interpreter: str
    entry_file: str  # the job's `code` is written here, inside the work dir
    flags: tuple[str, ...]
    version_prefix: str

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
        return (out.stdout or out.stderr).strip().removeprefix(self.version_prefix)


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
        version_prefix="Python ",
    ),
}

LANGUAGES: frozenset[str] = frozenset(RUNTIMES)
