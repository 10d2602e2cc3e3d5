"""What only the Docker backend has: hardened containers from a warm pool, each used once."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import docker
import pytest

from sandbox import ExecLimits, ExecResult, ExecSpec, OutputChunk, SandboxUnavailableError, Verdict
from sandbox.docker import DockerSandbox
from sandbox.docker_attach import Attached, EndMark, KeeperError
from sandbox.docker_keeper import MARK
from sandbox.docker_pool import (
    KEEPER_MEMORY_MB,
    LABEL_OWNER,
    LABEL_ROLE,
    DockerSettings,
    _create_kwargs,
)
from tests.backends import require_docker


@pytest.fixture
def engine() -> docker.DockerClient:
    require_docker()
    return docker.from_env()


def sandboxes(engine: docker.DockerClient, owner: str) -> list[str]:
    found = engine.containers.list(all=True, filters={"label": f"{LABEL_OWNER}={owner}"})
    return sorted(c.id for c in found)


async def ignore(chunk: OutputChunk) -> None:
    pass


async def test_containers_are_hardened(engine: docker.DockerClient) -> None:
    sandbox = DockerSandbox(DockerSettings(pool_size=1, owner="t-hardened"))
    await sandbox.check()
    try:
        for _ in range(100):
            if sandboxes(engine, "t-hardened"):
                break
            await asyncio.sleep(0.05)
        (container_id,) = sandboxes(engine, "t-hardened")
        config = engine.api.inspect_container(container_id)
        host = config["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert any(opt.startswith("seccomp=") for opt in host["SecurityOpt"])
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == host["MemorySwap"] == (256 + KEEPER_MEMORY_MB) * 2**20
        assert host["PidsLimit"] == 64 and host["NanoCpus"] == 10**9
        assert set(host["Tmpfs"]) == {"/work", "/tmp"}
        assert config["Config"]["User"] == "65534:65534"
        assert config["Config"]["OpenStdin"] is True and not host.get("Init")
        assert host["LogConfig"]["Type"] == "none"  # no copy of any job's output on disk
        assert config["Config"]["Labels"][LABEL_ROLE] == "sandbox"
    finally:
        await sandbox.close()
    assert sandboxes(engine, "t-hardened") == []


async def test_each_container_runs_one_job_and_is_removed(engine: docker.DockerClient) -> None:
    sandbox = DockerSandbox(DockerSettings(pool_size=2, owner="t-once"))
    await sandbox.check()
    code = "import socket\nprint(socket.gethostname(), open('/proc/1/cpuset').read().strip())"
    try:
        seen = set()
        for _ in range(3):
            spec = ExecSpec(job_id="j-once", language="python", code=code + "\nopen('mark','w')")
            result = await sandbox.run(spec, ignore)
            assert result.verdict is Verdict.ACCEPTED, result
            seen.add(result.stdout)
        # Every job saw a different container (its cgroup path names it).
        assert len(seen) == 3
    finally:
        await sandbox.close()
    assert sandboxes(engine, "t-once") == []


async def test_orphans_of_a_crashed_worker_are_removed_at_start(
    engine: docker.DockerClient,
) -> None:
    labels = {LABEL_ROLE: "sandbox", LABEL_OWNER: "t-orphans"}
    orphan = engine.containers.run(
        DockerSettings().image,
        ["sleep", "infinity"],
        detach=True,
        labels=labels,
        network_mode="none",
    )
    stranger = engine.containers.run(
        DockerSettings().image,
        ["sleep", "infinity"],
        detach=True,
        labels={**labels, LABEL_OWNER: "t-someone-else"},
        network_mode="none",
    )
    try:
        sandbox = DockerSandbox(DockerSettings(pool_size=0, owner="t-orphans"))
        await sandbox.check()
        await sandbox.close()
        assert orphan.id not in sandboxes(engine, "t-orphans")
        assert sandboxes(engine, "t-someone-else") == [stranger.id]  # not ours to remove
    finally:
        stranger.remove(force=True)


async def test_limits_other_than_the_pools_get_a_fresh_container(
    engine: docker.DockerClient,
) -> None:
    sandbox = DockerSandbox(DockerSettings(pool_size=1, owner="t-limits"))
    await sandbox.check()
    try:
        spec = ExecSpec(
            job_id="j-limits",
            language="python",
            code="import os\nwhile True:\n    try: os.fork()\n    except OSError: break\n"
            "print('capped')",
            limits={"processes": 8, "memory_mb": 128},
        )
        result = await sandbox.run(spec, ignore)
        assert result.verdict is Verdict.ACCEPTED and "capped" in result.stdout
    finally:
        await sandbox.close()


async def test_missing_image_refuses_to_start(engine: docker.DockerClient) -> None:
    sandbox = DockerSandbox(DockerSettings(image="crucible-no-such-image:0", owner="t-none"))
    with pytest.raises(Exception, match="crucible sandbox build-image"):
        await sandbox.check()


async def test_no_engine_is_a_clear_unavailable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A port nothing listens on: the engine does not answer at all.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    with pytest.raises(SandboxUnavailableError, match="no Docker engine"):
        await DockerSandbox(DockerSettings(pool_size=0, owner="tests-no-engine")).check()


async def run(pooled: DockerSandbox, code: str, **limits: float) -> ExecResult:
    spec = ExecSpec(job_id="j-keeper", language="python", code=code, limits=limits)
    return await pooled.run(spec, ignore)


@pytest.fixture
async def pooled(engine: docker.DockerClient) -> AsyncIterator[DockerSandbox]:
    sandbox = DockerSandbox(DockerSettings(pool_size=1, owner=f"t-keeper-{os.getpid()}"))
    await sandbox.check()
    yield sandbox
    await sandbox.close()


async def test_a_job_that_closes_its_output_is_followed_to_its_exit(
    pooled: DockerSandbox,
) -> None:
    code = "import os, time\nprint('bye', flush=True)\nos.close(1)\nos.close(2)\n"
    exited = await run(pooled, code + "time.sleep(0.5)\nraise SystemExit(3)")
    assert (exited.verdict, exited.exit_code, exited.stdout) == (Verdict.RUNTIME_ERROR, 3, "bye\n")
    assert exited.wall_time_s >= 0.5
    slept = await run(pooled, code + "time.sleep(30)", wall_time_s=1)
    assert slept.verdict is Verdict.TIME_LIMIT_EXCEEDED, slept


async def test_the_end_is_the_jobs_own_exit_not_its_childrens(pooled: DockerSandbox) -> None:
    # A child that keeps writing to the job's stdout dies with the job: it cannot stretch it.
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    while True:\n"
        "        print('child', flush=True)\n"
        "        time.sleep(0.01)\n"
        "time.sleep(0.2)\n"
        "raise SystemExit(7)"
    )
    result = await run(pooled, code, wall_time_s=10)
    assert (result.verdict, result.exit_code) == (Verdict.RUNTIME_ERROR, 7), result
    assert "child\n" in result.stdout


async def test_the_job_cannot_kill_or_read_the_keeper(pooled: DockerSandbox) -> None:
    # The keeper is pid 1 (unsignalable from inside) and not dumpable: the job, the same
    # uid, cannot end it, nor read the token it is sent from its stdin or its memory.
    code = (
        "import os, signal\n"
        "for number in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):\n"
        "    os.kill(1, number)\n"
        "read = []\n"
        "for path in ('/proc/1/fd/0', '/proc/1/mem', '/proc/1/environ'):\n"
        "    try:\n"
        "        open(path, 'rb').read(1)\n"
        "        read.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('alive', read)"
    )
    result = await run(pooled, code)
    assert (result.verdict, result.stdout) == (Verdict.ACCEPTED, "alive []\n"), result


async def test_a_mark_the_job_makes_up_does_not_end_it(pooled: DockerSandbox) -> None:
    fake = "\0" + "0" * 32 + "000"
    code = f"import sys, time\nfor s in (sys.stdout, sys.stderr): s.write({fake!r})\n"
    result = await run(pooled, code + "time.sleep(0.3)\nraise SystemExit(4)")
    assert (result.verdict, result.exit_code) == (Verdict.RUNTIME_ERROR, 4), result
    assert result.stdout == result.stderr == "\0" + "0" * 32 + "000"


async def test_a_container_that_died_in_the_pool_is_skipped(
    engine: docker.DockerClient, pooled: DockerSandbox
) -> None:
    await pooled.settle()
    (waiting,) = sandboxes(engine, pooled._settings.owner)
    engine.containers.get(waiting).kill()
    engine.containers.get(waiting).wait()
    pool = pooled._pool
    assert pool is not None
    for _ in range(100):  # until the pool's reader has seen the stream end
        if not any(attached.alive for attached in pool._ready._queue):  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.02)
    result = await run(pooled, "print('ran')")
    assert (result.verdict, result.stdout) == (Verdict.ACCEPTED, "ran\n"), result


async def test_a_container_killed_under_its_job_is_an_internal_error(
    engine: docker.DockerClient, pooled: DockerSandbox
) -> None:
    await pooled.settle()
    (waiting,) = sandboxes(engine, pooled._settings.owner)

    async def kill_soon() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(engine.containers.get(waiting).kill)

    killing = asyncio.create_task(kill_soon())
    result = await run(pooled, "import time\nprint('started', flush=True)\ntime.sleep(30)")
    await killing
    # Not the wall clock's time_limit_exceeded: the stream's end said so, at once.
    assert result.verdict is Verdict.INTERNAL_ERROR, result
    assert "stopped" in (result.reason or "") and result.stdout == "started\n"


def test_the_end_mark_is_found_across_frames_and_only_whole() -> None:
    token = b"ab" * 16
    mark = MARK + token + b"042"
    found = EndMark(token)
    # Split everywhere: the job's bytes come through whole, in order, and nothing else.
    out = b"".join(found.feed(bytes([byte])) for byte in b"out\0put\0" + mark)
    assert (out, found.status) == (b"out\0put\0", 42)
    other = EndMark(token)
    assert other.feed(b"text" + MARK + b"ab") == b"text"  # maybe a mark: held back
    assert other.feed(b"zz") == MARK + b"abzz"  # not one after all: passed on
    assert other.rest() == b"" and not other.found
    assert other.feed(b"x\0") == b"x" and other.rest() == b"\0"  # the stream ended


def test_a_keeper_that_does_not_start_is_refused(engine: docker.DockerClient) -> None:
    settings = DockerSettings(owner="t-broken-keeper")
    create = _create_kwargs(settings, ExecLimits()) | {"command": ["sh", "-c", "echo no >&2"]}
    with pytest.raises(KeeperError, match="did not start: b'no"):
        Attached.open(engine, create)
    assert sandboxes(engine, "t-broken-keeper") == []  # and removed


async def test_a_python_job_in_the_keepers_interpreter_reads_as_python3s(
    pooled: DockerSandbox,
) -> None:
    code = (
        "import atexit, os, signal, sys, threading, time\n"
        "print(__name__, __file__, sys.argv, sys.path[0], sys.flags.ignore_environment)\n"
        "print(sorted(os.environ), os.getcwd(), input())\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
    )
    spec = ExecSpec(job_id="j-fresh", language="python", code=code, args=["a"], stdin="in\n")
    result = await pooled.run(spec, ignore)
    assert result.stdout.splitlines() == [
        "__main__ /work/main.py ['main.py', 'a'] /work 1",
        "['HOME', 'LANG', 'PATH'] /work in",
        "True",
        "thread done",
        "atexit ran",
    ], result
    crash = await run(pooled, "def f():\n    1 / 0\nf()")
    assert crash.exit_code == 1 and crash.stderr.startswith(
        'Traceback (most recent call last):\n  File "/work/main.py", line 3, in <module>\n'
    ), crash.stderr
    assert "<string>" not in crash.stderr  # nothing of the keeper's own frames
    worded = await run(pooled, "raise SystemExit('bye')")
    assert (worded.exit_code, worded.stderr) == (1, "bye\n")
    interrupted = await run(pooled, "import os, signal\nos.kill(os.getpid(), signal.SIGINT)")
    assert "KeyboardInterrupt" in interrupted.stderr and interrupted.signal == "SIGINT"


_BIG_C = (
    "#include <stdio.h>\n"
    "char big[30 << 20] = {1};  /* 30 MB of initialised data: in the binary */\n"
    'int main(int argc, char **argv) { printf("%d\\n", big[argc * 1000]); return 0; }\n'
)


async def test_a_binary_bigger_than_the_memory_limit_is_the_jobs_failure(
    pooled: DockerSandbox,
) -> None:
    # The binary sits in the container's tmpfs, charged to its memory, where the engine
    # cannot lower the limit below it after the compile step.
    spec = ExecSpec(job_id="j-big", language="c", code=_BIG_C, limits=ExecLimits(memory_mb=16))
    result = await pooled.run(spec, ignore)
    assert result.verdict is Verdict.MEMORY_LIMIT_EXCEEDED, result


async def test_a_compiled_programs_peak_is_its_own_not_the_compilers(pooled: DockerSandbox) -> None:
    # Compiling 30 MB of data peaks at ~100 MB; the program holds its ~30 MB binary and a page.
    result = await pooled.run(ExecSpec(job_id="j-peak", language="c", code=_BIG_C), ignore)
    assert result.verdict is Verdict.ACCEPTED, result
    assert result.memory_peak_mb < 70, result
