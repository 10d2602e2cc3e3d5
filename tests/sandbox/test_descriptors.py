"""The worker's side of a sandbox closes each descriptor once: never a number again.

A second close of a number finds it free (EBADF), or, when another thread has opened
something at that number meanwhile, closes that under its owner. uvloop's
`connect_read_pipe` closed every job's output pipes twice (MagicStack/uvloop#763); in a
100,000-sample eval a cgroup write in a thread got a number in between, and a sandbox lost
its socket to the chain of wrong closes that followed. strace sees every close() that
fails: with the worker's loop (uvloop), over the fork server's jobs (a quiet one, a loud
one that fills its pipe buffers) and a compiled job's two phases, there must be none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JOBS = """
import asyncio

import uvloop

from sandbox import ExecSpec, Verdict
from sandbox.bwrap import BwrapSandbox


async def main() -> None:
    sandbox = BwrapSandbox()
    await sandbox.check()

    async def sink(chunk: object) -> None:
        pass

    jobs = [("python", "print(1)")] * 6 + [
        ("python", "import sys\\nfor _ in range(64):\\n    sys.stdout.write('x' * 65536)"),
        ("c", '#include <stdio.h>\\nint main(void) { puts("1"); return 0; }'),
    ]
    for number, (language, code) in enumerate(jobs):
        spec = ExecSpec(job_id=f"fd-{number}", language=language, code=code)
        result = await sandbox.run(spec, sink)
        assert result.verdict in (Verdict.ACCEPTED, Verdict.OUTPUT_LIMIT_EXCEEDED), result
    await sandbox.close()


uvloop.run(main())
"""

# Every thread and process (-f), only the close() calls that failed, no signals.
STRACE_FAILED_CLOSES = (
    *("strace", "-f", "-qq", "-e", "trace=close"),
    *("-e", "status=failed", "-e", "signal=none"),
)


def test_no_descriptor_is_closed_twice_under_the_workers_loop(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run this test: install strace (.ci/run does)")
        pytest.skip("strace is not installed: apt-get install strace")
    script = tmp_path / "jobs.py"
    script.write_text(JOBS)
    trace = tmp_path / "closes.txt"
    done = subprocess.run(
        [*STRACE_FAILED_CLOSES, "-o", str(trace), sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert trace.read_text().splitlines() == []
