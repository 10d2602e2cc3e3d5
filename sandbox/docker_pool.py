"""Warm containers for the Docker backend: created, attached and started ahead of time, each
used for one job; its main process is the keeper (`docker_keeper.py`), waiting for the job."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import suppress
from pathlib import Path

import docker
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.docker_attach import Attached
from sandbox.docker_usage import memory_now_mb
from sandbox.models import ExecLimits
from sandbox.seccomp import docker_profile

log = logging.getLogger(__name__)

LABEL_ROLE = "crucible.role"
LABEL_OWNER = "crucible.worker"
SANDBOX_USER = "65534:65534"
WORK_DIR = "/work"
_NANO_CPUS_PER_CORE = 1_000_000_000
# The keeper's python3 at rest uses ~5.5 MB of the container's memory (measured): added to
# the limit, so that the job keeps its whole `memory_mb`, as with no keeper.
KEEPER_MEMORY_MB = 6
_KEEPER = Path(__file__).with_name("docker_keeper.py").read_text()
_PYTHON_MAIN = Path(__file__).with_name("python_main.py").read_text()


class DockerSettings(BaseSettings):
    """`CRUCIBLE_DOCKER_*`; the engine itself comes from DOCKER_HOST / DOCKER_TLS_VERIFY."""

    model_config = SettingsConfigDict(env_prefix="CRUCIBLE_DOCKER_", populate_by_name=True)

    image: str = "crucible-runtime:latest"
    runtime: str | None = None  # e.g. "runsc" for gVisor
    pool_size: int = Field(2, ge=0, le=64)
    # Labels this worker's containers, to find its orphans after a crash; a stable worker id
    # (as `crucible up` gives) makes a restarted worker clean up after its predecessor.
    owner: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        validation_alias=AliasChoices("CRUCIBLE_DOCKER_OWNER", "CRUCIBLE_WORKER_WORKER_ID"),
    )


def memory_limit(memory_mb: int) -> str:
    """A container's memory limit for a job's `memory_mb`: the keeper's own comes on top."""
    return f"{memory_mb + KEEPER_MEMORY_MB}m"


def _create_kwargs(settings: DockerSettings, limits: ExecLimits) -> dict[str, object]:
    memory = memory_limit(limits.memory_mb)
    tmpfs = f"size={limits.disk_mb}m,mode=1777,nosuid,nodev"
    # Compiled programs are written to /tmp and run from there: it may not be noexec.
    kwargs: dict[str, object] = {
        "image": settings.image,
        # No docker-init: the keeper is pid 1 itself (it reaps the job's orphans), so that the
        # job, the same uid, cannot kill it; see docker_keeper.py.
        # Its interpreter runs Python jobs too: started with their flags (see runtimes.py).
        "command": ["/usr/bin/python3", "-E", "-s", "-u", "-c", _KEEPER, _PYTHON_MAIN],
        "stdin_open": True,
        # Output reaches the worker over the attach stream; no copy of it on the engine's disk.
        "log_config": {"type": "none"},
        "network_mode": "none",
        "cap_drop": ["ALL"],
        # Our filter, the bwrap backend's, in place of Docker's default (which allows ptrace).
        "security_opt": ["no-new-privileges", f"seccomp={docker_profile()}"],
        "read_only": True,
        "tmpfs": {WORK_DIR: tmpfs, "/tmp": f"{tmpfs},exec"},
        "user": SANDBOX_USER,
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap: it would be a way around the memory limit
        "pids_limit": limits.processes,
        "nano_cpus": _NANO_CPUS_PER_CORE,  # one core a job
        "hostname": "sandbox",
        "environment": {},
        "labels": {LABEL_ROLE: "sandbox", LABEL_OWNER: settings.owner},
    }
    if settings.runtime:
        kwargs["runtime"] = settings.runtime
    return kwargs


class ContainerPool:
    """Containers with the default limits wait in a queue; other limits get a fresh one."""

    def __init__(self, client: docker.DockerClient, settings: DockerSettings) -> None:
        self._client = client
        self._settings = settings
        self._default = ExecLimits()
        self._ready: asyncio.Queue[Attached] = asyncio.Queue()
        self._filling: set[asyncio.Task[None]] = set()
        self._removing: set[asyncio.Task[None]] = set()

    def remove_orphans(self) -> int:
        """Remove sandboxes a previous run of this worker left behind (it crashed)."""
        orphans = self._client.containers.list(
            all=True,
            filters={"label": [f"{LABEL_ROLE}=sandbox", f"{LABEL_OWNER}={self._settings.owner}"]},
        )
        for container in orphans:
            with suppress(docker.errors.NotFound):
                container.remove(force=True)
        return len(orphans)

    async def _create(self, limits: ExecLimits) -> Attached:
        kwargs = _create_kwargs(self._settings, limits)
        attached = await asyncio.to_thread(Attached.open, self._client, kwargs)
        # What the keeper holds before any job, not to be counted as the job's.
        attached.keeper_mb = memory_now_mb(attached.container.id)
        if not attached.tls:
            # Read from now on: a container that dies in the pool is seen, and skipped. Over
            # TLS the socket is read only once the job is written, never both at once.
            attached.listen(asyncio.get_running_loop())
        return attached

    async def _fill_one(self) -> None:
        try:
            self._ready.put_nowait(await self._create(self._default))
        except docker.errors.DockerException:
            log.exception("could not pre-create a sandbox container")

    def refill(self) -> None:
        """Top the pool up in the background, off the critical path of any job."""
        missing = self._settings.pool_size - self._ready.qsize() - len(self._filling)
        for _ in range(max(missing, 0)):
            task = asyncio.create_task(self._fill_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def take(self, limits: ExecLimits) -> Attached:
        """A running, never-used container for a job with `limits`."""
        fits_pool = (limits.processes, limits.disk_mb) == (
            self._default.processes,
            self._default.disk_mb,
        )
        while fits_pool:
            if self._ready.empty():
                if not self._filling:
                    break
                # One on its way is ready sooner than one made now, which would slow both.
                await asyncio.wait(set(self._filling), return_when=asyncio.FIRST_COMPLETED)
                continue
            attached = self._ready.get_nowait()
            self.refill()
            if not attached.alive:
                self.discard(attached)  # stopped while it waited (killed, the engine restarted)
                continue
            if limits.memory_mb != self._default.memory_mb:
                memory = memory_limit(limits.memory_mb)
                await asyncio.to_thread(
                    attached.container.update, mem_limit=memory, memswap_limit=memory
                )
            return attached
        self.refill()
        return await self._create(limits)

    async def settle(self) -> None:
        """Wait until the pool is full again and used containers are gone."""
        await asyncio.gather(*self._filling, *self._removing, return_exceptions=True)

    def discard(self, attached: Attached) -> None:
        """Remove a used container in the background (force: whatever still runs in it dies)."""

        async def remove() -> None:
            with suppress(docker.errors.DockerException):
                await asyncio.to_thread(attached.container.remove, force=True)
            await asyncio.to_thread(attached.close)

        task = asyncio.create_task(remove())
        self._removing.add(task)
        task.add_done_callback(self._removing.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._removing, return_exceptions=True)
        # Let containers being created land in the queue, so that none is left behind.
        await asyncio.gather(*self._filling, return_exceptions=True)
        while not self._ready.empty():
            self.discard(self._ready.get_nowait())
        await asyncio.gather(*self._removing, return_exceptions=True)
