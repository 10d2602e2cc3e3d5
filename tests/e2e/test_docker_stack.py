"""The whole stack with CRUCIBLE_SANDBOX=docker: workers run jobs in containers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.backends import require_docker
from tests.sse_client import run_job
from tests.stack import Stack, start_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def docker_stack(tmp_path: Path) -> Iterator[Stack]:
    require_docker()
    running = start_stack(tmp_path, workers=1, env={"CRUCIBLE_SANDBOX": "docker"})
    yield running
    assert running.stop() == 0, running.log()


def test_a_job_runs_in_a_container_end_to_end(docker_stack: Stack) -> None:
    runtimes = httpx.get(f"{docker_stack.url}/v1/runtimes", headers=docker_stack.headers()).json()
    assert {r["language"] for r in runtimes["runtimes"]} >= {"python", "javascript", "bash"}
    finished = run_job(
        docker_stack,
        {
            "language": "python",
            "code": "import socket\nprint(socket.gethostname(), input())",
            "stdin": "hi\n",
        },
    )
    assert (finished["verdict"], finished["stdout"]) == ("accepted", "sandbox hi\n")
    slow = run_job(
        docker_stack,
        {"language": "python", "code": "while True: pass", "limits": {"wall_time_s": 1}},
    )
    assert slow["verdict"] == "time_limit_exceeded"
