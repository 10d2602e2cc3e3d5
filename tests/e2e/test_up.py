"""`crucible up`: separate worker processes, restarted when they die, all stopped on SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sse_client import run_job
from tests.stack import Stack, start_stack


def wait_until(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def small_stack(tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, workers=2)
    yield running
    running.stop()


@pytest.mark.slow
def test_workers_are_processes_restarted_when_they_die(small_stack: Stack) -> None:
    workers = small_stack.processes("crucible worker")
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    wait_until(
        lambda: (
            len(small_stack.processes("crucible worker")) == 2
            and workers[0] not in small_stack.processes("crucible worker")
        )
    )
    assert run_job(small_stack, {"language": "python", "code": "print(2)"})["verdict"] == "accepted"


@pytest.mark.slow
def test_sigterm_stops_everything_cleanly(small_stack: Stack) -> None:
    children = small_stack.processes("crucible") + small_stack.processes("nats-server")
    assert len(children) >= 4  # nats-server, gateway, two workers
    assert small_stack.stop() == 0
    assert "Crucible stopped" in small_stack.log()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10)
