"""A worker's pause before its next job while the bus does not take its jobs' events.

In a NATS cluster, losing a node can leave the EVENTS stream without a leader for seconds
while the JOBS stream still hands out jobs. A worker that went on fetching ran job after job
whose results it could not store: in a 20,000-sample eval with a node SIGKILLed, 360 jobs in
6 s, each then waiting out its ack wait before running again. Each failure doubles the pause
before the worker's slots fetch again, from `MIN_PAUSE_S` up to `MAX_PAUSE_S`; a result
stored again ends it.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

MIN_PAUSE_S = 0.25
MAX_PAUSE_S = 8.0


class BusBackoff:
    """Shared by a worker's slots: one failing job slows all of them down."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        self._pause_s = 0.0
        self._until = 0.0  # loop time

    def failed(self) -> float:
        """A job's events could not be stored (or its history read): the pause now, in s."""
        self._pause_s = min(max(self._pause_s * 2, MIN_PAUSE_S), MAX_PAUSE_S)
        self._until = max(self._until, asyncio.get_running_loop().time() + self._pause_s)
        return self._pause_s

    def worked(self) -> None:
        """A job's result was stored: the bus takes events again."""
        self._pause_s = 0.0
        self._until = 0.0

    async def wait(self) -> None:
        """Until the pause is over, or the worker stops."""
        delay = self._until - asyncio.get_running_loop().time()
        if delay > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
