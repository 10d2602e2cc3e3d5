"""Children of `crucible up` stop themselves when the supervisor vanishes (e.g. SIGKILL)."""

from __future__ import annotations

import os
import signal
import threading
import time

_CHECK_EVERY_S = 1.0


def exit_with_parent(parent_pid: int | None) -> None:
    """SIGTERM ourselves (a graceful stop) once `parent_pid` is no longer our parent."""
    if parent_pid is None:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_CHECK_EVERY_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def parent_pid_from_env() -> int | None:
    value = os.environ.get("CRUCIBLE_PARENT_PID", "")
    return int(value) if value.isdigit() else None
