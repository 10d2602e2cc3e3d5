"""The live workers, as their heartbeats on `crucible.workers.*` tell."""

from __future__ import annotations

import time

from bus import WorkerHeartbeat


class WorkerRegistry:
    """Remembers each worker's last heartbeat; a silent worker goes stale and stops counting."""

    def __init__(self, stale_after_s: float) -> None:
        self._stale_after_s = stale_after_s
        self._seen: dict[str, tuple[float, WorkerHeartbeat]] = {}

    def record(self, heartbeat: WorkerHeartbeat) -> None:
        self._seen[heartbeat.worker_id] = (time.monotonic(), heartbeat)

    def live(self) -> list[WorkerHeartbeat]:
        """Workers heard from recently; forgets the others."""
        horizon = time.monotonic() - self._stale_after_s
        self._seen = {wid: seen for wid, seen in self._seen.items() if seen[0] >= horizon}
        return [heartbeat for _, heartbeat in self._seen.values()]
