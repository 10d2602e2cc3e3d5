"""What only the Docker backend has: hardened containers from a warm pool, each used once."""

from __future__ import annotations

import asyncio
import socket

import docker
import pytest

from sandbox import ExecSpec, OutputChunk, SandboxUnavailableError, Verdict
from sandbox.docker import DockerSandbox
from sandbox.docker_pool import LABEL_OWNER, LABEL_ROLE, DockerSettings
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
        assert host["Memory"] == host["MemorySwap"] == 256 * 2**20
        assert host["PidsLimit"] == 64 and host["NanoCpus"] == 10**9
        assert set(host["Tmpfs"]) == {"/work", "/tmp"}
        assert config["Config"]["User"] == "65534:65534"
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
