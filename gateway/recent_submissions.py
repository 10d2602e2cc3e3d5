"""Watches of the jobs this gateway has just enqueued, for the event streams that follow.

A client that posts a job mostly opens its `events_url` next, a few milliseconds later and
through the same gateway. When the gateway's event feed is reading as the job is posted, a
watch of the job's events is made before the job is enqueued and kept for a few seconds:
every event of the job comes to it, so the stream that takes it reads nothing back from
JetStream (a direct get, a round trip). A watch nobody takes is let go of; a stream
through another gateway, or later, reads the stream as any stream does.
"""

from __future__ import annotations

import asyncio

from bus import JobRecord
from bus import subjects as s
from gateway.event_feed import EventFeed, PendingWatch

# Long enough for a client's next request, short enough that watches of jobs nobody follows
# (each holds its job's events meanwhile) stay few.
HELD_S = 5.0
MAX_HELD = 1000  # beyond it (a burst of jobs posted and not followed), jobs get none


class RecentSubmissions:
    """The watches of jobs just posted here, by job id, each held for `HELD_S`."""

    def __init__(self, feed: EventFeed) -> None:
        self._feed = feed
        self._held: dict[str, tuple[PendingWatch, asyncio.TimerHandle]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def watch(self, record: JobRecord) -> None:
        """Watch the job's events from now on, if the feed is reading (call it before the job
        is enqueued: then every event of the job comes to the watch)."""
        if len(self._held) >= MAX_HELD:
            return
        watch = self._feed.open_now(s.events_subject(record.run_id, record.job_id))
        if watch is None:
            return
        timer = asyncio.get_running_loop().call_later(HELD_S, self.forget, record.job_id)
        self._held[record.job_id] = (PendingWatch(self._feed, watch), timer)

    def take(self, job_id: str) -> PendingWatch | None:
        """The job's watch, to its first stream; None if there is none (any more)."""
        found = self._held.pop(job_id, None)
        if found is None:
            return None
        pending, timer = found
        timer.cancel()
        return pending

    def forget(self, job_id: str) -> None:
        """Let go of the job's watch (its submission failed, or nobody came for it)."""
        pending = self.take(job_id)
        if pending is not None:
            pending.close()
