"""A Python job run in an interpreter already started, as `python3 -E -s -u <entry>` would run it.

Standard library only: the Docker keeper (`docker_keeper.py`) and the bwrap fork server
(`zygote_server.py`) each receive this file's source and run it in the job's process, forked
from their already-started interpreter.
"""

from __future__ import annotations

import atexit
import builtins
import importlib.machinery
import os
import signal
import sys
import threading
import types

# Not `typing` itself: importing it would slow every container's start by milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

_FLAGS = ("-E", "-s", "-u")  # what the job's interpreter was started with


def run_as_main(
    path: str, args: list[str], compiled: dict[bytes, types.CodeType] | None = None
) -> NoReturn:
    """Run the file at `path` as `__main__` with `args`, then leave as the interpreter does.

    `compiled`: code already compiled from known sources for `path` (by the fork server,
    before any job), used when the file holds exactly one of them."""
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__dict__["__builtins__"] = builtins
    main.__annotations__ = {}  # as the interpreter's own __main__ starts with
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    sys.modules["__main__"] = main
    entry = os.path.basename(path)
    sys.argv = [entry, *args]
    sys.orig_argv = [sys.executable, *_FLAGS, entry, *args]
    sys.path[0] = os.path.dirname(path)
    interrupted = False
    try:
        with open(path, "rb") as source:  # bytes: a coding cookie is honoured, as python3 does
            text = source.read()
        code = compiled.get(text) if compiled else None
        if code is None or code.co_filename != path:
            # Here, not in a function: a SyntaxError's traceback starts at the job's file.
            # dont_inherit: this file's `from __future__ import annotations` is not the
            # job's (its annotations are evaluated, as under python3).
            code = compile(text, path, "exec", dont_inherit=True)
        exec(code, main.__dict__)
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException as exc:
        # The traceback starts at the job's own code, as a fresh interpreter's would.
        tb = exc.__traceback__
        exc = exc.with_traceback(tb.tb_next if tb else None)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        status, interrupted = 1, isinstance(exc, KeyboardInterrupt)
    _exit(status, interrupted)


def _exit_status(exc: SystemExit) -> int:
    """What the interpreter makes of `sys.exit(code)`: an int as is, anything else printed."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _exit(status: int, interrupted: bool) -> NoReturn:
    """Leave as the interpreter does, less tearing down every module one by one.

    A fresh interpreter's exit waits for non-daemon threads, runs atexit functions and
    flushes stdout and stderr, then frees all it holds: nothing of that last part is visible
    to a job. An uncaught KeyboardInterrupt ends it by SIGINT, as it ends python3.
    """
    threading._shutdown()  # type: ignore[attr-defined] # what Py_FinalizeEx calls first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # the interpreter's code for a flush that failed at exit
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)
