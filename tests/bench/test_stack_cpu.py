"""bench.stack_cpu's accounting on a real process tree: each process counted once, in the kind
of its nearest ancestor that has one, reaped children included."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench import stack_cpu
from sandbox import ExecSpec, OutputChunk, Verdict
from sandbox.bwrap import BwrapSandbox

_MARK = "crucible-test-kind"
# Burns 0.3 s of CPU (not of wall time: a loaded machine only makes it take longer).
_BURNER = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"


def test_a_reaped_unnamed_child_counts_in_its_ancestors_kind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stack_cpu, "_KINDS", ((_MARK, "test kind"),))
    marked = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {_BURNER!r}])\n"
        "print('reaped', flush=True)\n"
        "time.sleep(30)"
    )
    root = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])",
         sys.executable, "-c", marked, _MARK],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert root.stdout is not None
    try:
        assert root.stdout.readline() == "reaped\n"
        time.sleep(0.05)  # the kernel's figures for the reaped child land with the wait
        spent = stack_cpu.stack_cpu_s(root.pid)
    finally:
        root.kill()
        subprocess.run(["pkill", "-f", _MARK], check=False)
        root.wait()
        root.stdout.close()
    # The burner is gone, reaped by the marked process: its 0.3 s show there, and only there.
    assert set(spent) == {"test kind"}
    assert 0.3 <= spent["test kind"] < 1.5, spent


async def test_a_fork_server_jobs_cpu_counts_though_no_process_reaps_it() -> None:
    # The kernel reaps the fork server's jobs: their CPU is in their cgroups' figures only.
    sandbox = BwrapSandbox()
    await sandbox.check()
    assert sandbox.fast_path
    try:
        before = stack_cpu.job_cgroups_cpu_s()
        spec = ExecSpec(job_id="j-burn", language="python", code=_BURNER)
        result = await sandbox.run(spec, _ignore)
        spent = stack_cpu.job_cgroups_cpu_s() - before
    finally:
        await sandbox.close()
    assert result.verdict is Verdict.ACCEPTED, result
    assert spent >= 0.3, spent  # other jobs on the machine may add to it, never take away


async def _ignore(chunk: OutputChunk) -> None:
    pass
