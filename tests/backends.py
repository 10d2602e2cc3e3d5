"""Every sandbox backend, for the suites that must hold on each (conformance, security)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sandbox import Sandbox, create_sandbox
from sandbox.bwrap import BwrapSandbox
from sandbox.docker import DockerSandbox
from sandbox.docker_pool import DockerSettings

# bwrap runs Python jobs through its fork server; bwrap-classic, a fresh bwrap each.
BACKENDS = ["bwrap", "bwrap-classic", "docker"]


def docker_missing() -> str | None:
    """Why the Docker backend cannot be tested here, or None when it can."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine (start dockerd)"
    image = DockerSettings().image
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        return f"no {image} image (crucible sandbox build-image)"
    return None


def require_docker() -> None:
    """Skip without Docker, except in CI, where a missing engine is a failure."""
    reason = docker_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must test the Docker backend: {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def open_sandbox(backend: str) -> AsyncIterator[Sandbox]:
    if backend == "docker":
        require_docker()
        # Per test process: a concurrent run's orphan cleanup must not take our containers.
        owner = f"tests-{os.getpid()}"
        sandbox: Sandbox = DockerSandbox(DockerSettings(pool_size=1, owner=owner))
    elif backend == "bwrap-classic":
        sandbox = BwrapSandbox(fork_server=False)
    else:
        sandbox = create_sandbox(backend)
    await sandbox.check()
    if backend == "bwrap" and isinstance(sandbox, BwrapSandbox) and not sandbox.fast_path:
        pytest.fail("bwrap's fork server did not start, so its path goes untested: see the log")
    try:
        yield sandbox
    finally:
        await sandbox.close()
