"""`crucible top` shows the queue, the workers and the verdicts of jobs finishing meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.stack import Stack, free_port


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


def test_operator_commands_say_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "debug.json"
    for command in (["top", "--once", "1"], ["audit", "tail"]):
        done = subprocess.run(
            [sys.executable, "-m", "crucible", *command, "--creds-file", str(missing)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 1
        assert done.stderr.strip().startswith(f"no credentials at {missing}")
        assert "Traceback" not in done.stderr


def test_an_unreachable_nats_is_one_line_too(tmp_path: Path) -> None:
    creds = tmp_path / "debug.json"
    creds.write_text('{"user": "debug", "password": "x"}')
    done = subprocess.run(
        [sys.executable, "-m", "crucible", "audit", "tail", "--creds-file", str(creds),
         "--url", f"nats://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    (line,) = done.stderr.strip().splitlines()  # one line, not a warning per reconnect
    assert done.returncode == 1 and line.startswith("cannot connect to NATS at nats://127.0.0.1")
