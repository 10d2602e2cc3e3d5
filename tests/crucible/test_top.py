"""`crucible top` shows the queue, the workers and the verdicts of jobs finishing meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.stack import Stack


def test_top_shows_workers_throughput_and_verdicts(stack: Stack) -> None:
    nats = stack.nats()
    top = subprocess.Popen(
        [sys.executable, "-m", "crucible", "top", "--once", "6"],
        env={
            **os.environ,
            "CRUCIBLE_NATS_URL": nats.url,
            "CRUCIBLE_NATS_CREDS_FILE": str(nats.creds_file),
            "COLUMNS": "120",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert top.stderr is not None
    assert "watching" in top.stderr.readline()  # subscribed: what finishes now is counted
    jobs = [{"language": "python", "code": "print(1)"}] * 6 + [
        {"language": "python", "code": "raise SystemExit(3)"}
    ] * 2
    response = httpx.post(f"{stack.url}/v1/runs", json={"jobs": jobs}, headers=stack.headers())
    assert response.status_code == 202
    stdout, _ = top.communicate(timeout=60)
    assert top.returncode == 0
    for heading in ("queue (JOBS)", "workers", "verdicts", "finished/s"):
        assert heading in stdout
    assert "bwrap" in stdout  # a worker row, from its heartbeat
    verdicts = dict(
        (line.split("│")[1].strip(), int(line.split("│")[2]))
        for line in stdout.splitlines()
        if line.count("│") == 3 and line.split("│")[1].strip() in ("accepted", "runtime_error")
    )
    assert verdicts.get("accepted", 0) >= 6 and verdicts.get("runtime_error", 0) >= 2, stdout
