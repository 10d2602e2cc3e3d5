"""Job cgroups left behind by a worker that died are swept; nothing a live worker uses is."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from sandbox import ExecLimits
from sandbox.cgroups import (
    CGROUP_ROOT,
    CONTROLLERS,
    PARENT,
    STALE_AFTER_S,
    JobCgroup,
    sweep_stale,
)


def _make(name: str, age_s: float) -> list[str]:
    """A job cgroup in every controller, its directories dated `age_s` ago."""
    paths = [os.path.join(CGROUP_ROOT, c, PARENT, name) for c in CONTROLLERS]
    then = time.time() - age_s
    for path in paths:
        os.makedirs(path)
        os.utime(path, (then, then))
    return paths


@pytest.fixture
def made() -> Iterator[list[str]]:
    paths: list[str] = []
    yield paths
    for path in paths:
        if os.path.isdir(path):
            os.rmdir(path)


def test_only_old_empty_cgroups_are_swept(made: list[str]) -> None:
    tag = uuid.uuid4().hex[:8]
    stale = _make(f"j-test-stale-{tag}", STALE_AFTER_S * 2)
    fresh = _make(f"ready-test-fresh-{tag}", 0)
    busy = _make(f"j-test-busy-{tag}", STALE_AFTER_S * 2)
    made += stale + fresh + busy
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for path in busy:
            with open(os.path.join(path, "cgroup.procs"), "w") as procs:
                procs.write(str(sleeper.pid))
        assert sweep_stale() >= len(stale)
        assert not any(os.path.exists(path) for path in stale)
        assert all(os.path.isdir(path) for path in fresh + busy)
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once the process is gone, the old cgroup is no one's either.
    deadline = time.monotonic() + 5
    while any(os.path.isdir(path) for path in busy) and time.monotonic() < deadline:
        sweep_stale()
        time.sleep(0.05)
    assert not any(os.path.exists(path) for path in busy)


async def test_a_cgroup_removed_already_holds_nothing_to_kill() -> None:
    # A sandbox built ahead whose cgroup was swept while its fork server was replaced: its
    # discarding found the directories gone and failed the job that came (internal_error).
    cgroup = JobCgroup.create(f"gone-test-{uuid.uuid4().hex[:8]}", ExecLimits())
    cgroup.remove()
    assert cgroup.empty
    await cgroup.kill()  # returns: nothing is in it
