"""Job cgroups used again: each sandbox of the fork server takes one, and gives it back after.

Making a job cgroup is five mkdirs, removing it five rmdirs, each under the kernel's one
cgroup lock, which the removal of a memory cgroup holds for milliseconds while the worker's
next mkdirs wait. A cgroup whose job is over and whose processes are all gone serves the
next job as well: its peak memory, CPU time and failure counts are reset
(`JobCgroup.reset`), and its caps are set again only when they differ. Nothing of a job
stays in it that the next could see: a job sees no cgroup file (its cgroup namespace is
rooted in it and no cgroup filesystem is mounted in the sandbox), and the kernel memory a
job leaves charged (tens of KiB, measured) only adds that much to the next one's peak. A
job can leave far more (negative dentries from stat()s of names that do not exist, pages of
files it read: ~100 MB in a few seconds, found by a red-team pass), which would count in the
next job's peak and could make a smaller memory cap impossible to set (EBUSY): such a cgroup
is removed instead (its charges go to the parent) and the next job gets a fresh one.

Idle cgroups stay dated recently (`JobCgroup.touch`): `sweep_stale`, run by every worker
that starts, removes the empty ones dated a minute ago or more, as a dead worker's.
"""

from __future__ import annotations

import time
from collections import deque

from sandbox.cgroups import STALE_AFTER_S, JobCgroup, Remover

# Idle longer than this, a cgroup is removed rather than used again: well within the age at
# which another worker starting would take it for a dead worker's and sweep it.
IDLE_MAX_S = STALE_AFTER_S / 3
# Memory a job may leave charged for its cgroup to serve the next job: a few times what
# ordinary jobs leave (tens of KiB), far below the smallest cap a job may ask for.
REUSE_MAX_CHARGED_BYTES = 1024 * 1024
_IDLE_MAX = 8  # beyond what a fork server's sandboxes use at once: the rest is removed


class CgroupPool:
    """The idle job cgroups of one fork server; not thread-safe (the worker's loop uses it)."""

    def __init__(self, remover: Remover) -> None:
        self._remover = remover
        self._idle: deque[tuple[JobCgroup, float]] = deque()  # with when each came back

    def take(self) -> JobCgroup | None:
        """An idle cgroup whose processes are all gone, reset for its next job; or None."""
        now = time.monotonic()
        for _ in range(len(self._idle)):
            cgroup, since = self._idle.popleft()
            if now - since > IDLE_MAX_S:
                self._remover.remove(cgroup)
                continue
            try:
                if cgroup.busy:  # its last job's processes are still being torn down
                    self._idle.append((cgroup, since))
                    continue
                if cgroup.charged_bytes() > REUSE_MAX_CHARGED_BYTES:
                    self._remover.remove(cgroup)
                    continue
                cgroup.reset()
            except FileNotFoundError:
                continue  # swept after all (its worker was idle long): the next one
            return cgroup
        return None

    def give_back(self, cgroup: JobCgroup) -> None:
        """Its job is over (its processes killed, maybe not all gone yet)."""
        if len(self._idle) >= _IDLE_MAX:
            self._remover.remove(cgroup)
            return
        try:
            cgroup.touch()
        except FileNotFoundError:
            return  # swept while its job ended
        self._idle.append((cgroup, time.monotonic()))

    @property
    def idle(self) -> list[JobCgroup]:
        return [cgroup for cgroup, _ in self._idle]

    def drain(self) -> list[JobCgroup]:
        """Every idle cgroup, given up: the caller removes them."""
        idle = self.idle
        self._idle.clear()
        return idle
