"""One feed of new events per gateway process, handed in memory to the subjects' watchers.

A job's live tail used to read through a JetStream consumer of its own, made when its first
client came and deleted when its last one left: for a `print(1)` job followed by one client,
that was most of the gateway's and nats-server's work for the stream. Instead, the gateway
reads every new event once, through one ordered consumer over all of them, and hands each
message to whoever watches its subject (a dict lookup per message; events nobody watches are
dropped there). The feed starts with the first watcher and stops once none has been left for
a while (`event_feed_linger_s`), so a gateway that nobody watches jobs through reads nothing.

Positions are stream sequences, and the feed hands out messages in stream order: a watcher
made when the feed had handed out everything up to position `boundary_seq` gets every later
message of its subject, and what came before is stored (the feed only sees what the stream
stored), so a direct get up to `boundary_seq` fills in the rest with no gap and no repeat
(in a replicated stream, a read the leader confirms: `gateway.stored_events`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from nats.js import JetStreamContext

from bus import BusUnavailableError
from bus import subjects as s
from gateway.consumers import tail
from gateway.stored_events import StoredMessage

log = logging.getLogger(__name__)

# Long enough that a gateway whose clients come one after another keeps its feed (making
# one costs a stream info and a consumer), short enough that an idle one soon reads nothing.
FEED_LINGER_S = 30.0


class Watch:
    """A watcher's share of the feed: its subject's messages after `boundary_seq`."""

    def __init__(self, subject: str, boundary_seq: int, run: _Run) -> None:
        self.subject = subject
        self.boundary_seq = boundary_seq  # every later message of the subject comes here
        self.run: _Run | None = run  # None once released
        self._queue: deque[StoredMessage] = deque()
        self._more = asyncio.Event()
        self._error: BusUnavailableError | None = None

    def put(self, message: StoredMessage) -> None:
        self._queue.append(message)
        self._more.set()

    def fail(self, error: BusUnavailableError) -> None:
        self._error = error
        self._more.set()

    async def messages(self) -> AsyncIterator[StoredMessage]:
        """The subject's messages after `boundary_seq`, live, in order, until the feed
        fails (BusUnavailableError) or the reader stops."""
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self._error is not None:
                raise self._error
            self._more.clear()
            await self._more.wait()


class PendingWatch:
    """A watch made for a stream that has not begun: the job's tail takes it (and releases it
    when it stops reading, however many clients it served), or else it is released here."""

    def __init__(self, feed: EventFeed, watch: Watch) -> None:
        self._feed = feed
        self._watch: Watch | None = watch

    def take(self) -> Watch | None:
        """The watch, to the first taker; None after."""
        watch, self._watch = self._watch, None
        return watch

    def close(self) -> None:
        """Release the watch unless it was taken (again: nothing)."""
        watch = self.take()
        if watch is not None:
            self._feed.release(watch)


class _Run:
    """One life of the feed: its consumer, from the stream's end when it started."""

    def __init__(self, js: JetStreamContext, inbox: str) -> None:
        self._js = js
        self._inbox = inbox
        self.delivered_seq = 0  # the position of the last message handed out
        self.watches: dict[str, list[Watch]] = {}
        self.ended = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._read(), name="event feed")

    def add(self, subject: str) -> Watch:
        # No await between reading the position and joining: no message is handed out in
        # between, so the watch's boundary is exact.
        watch = Watch(subject, self.delivered_seq, self)
        self.watches.setdefault(subject, []).append(watch)
        return watch

    def remove(self, watch: Watch) -> None:
        watches = self.watches.get(watch.subject, [])
        if watch in watches:
            watches.remove(watch)
        if not watches:
            self.watches.pop(watch.subject, None)

    async def _read(self) -> None:
        error = BusUnavailableError("the event feed's consumer stopped")
        try:
            info = await self._js.stream_info(s.EVENTS_STREAM)
            start_seq = (info.state.last_seq or 0) + 1
            async with tail(
                self._js, self._inbox, s.EVENTS_STREAM, s.EVENTS_ALL, start_seq, headers_only=False
            ) as messages:
                self.delivered_seq = start_seq - 1
                self.ready.set_result(None)
                async for msg in messages:
                    seq = msg.metadata.sequence.stream
                    if seq <= self.delivered_seq:
                        continue  # handed out already (a consumer re-made from too far back)
                    self.delivered_seq = seq
                    for watch in self.watches.get(msg.subject, ()):
                        watch.put(StoredMessage(seq, msg.data, msg.headers))
        except BusUnavailableError as exc:
            error = exc
        except Exception as exc:  # nats-py raises several unrelated types
            log.warning("the event feed failed: %r", exc)
            error = BusUnavailableError(f"reading events failed: {exc!r}")
        finally:
            self.ended = True
            if not self.ready.done():
                self.ready.set_exception(error)
                self.ready.exception()  # retrieved: watchers waiting get it themselves
            for watches in self.watches.values():
                for watch in watches:
                    watch.fail(error)


class EventFeed:
    """The gateway's feed of new events: started by the first watcher, stopped when idle."""

    def __init__(
        self, js: JetStreamContext, new_inbox: Callable[[], str], linger_s: float = FEED_LINGER_S
    ) -> None:
        self._js = js
        self._linger_s = linger_s
        self._new_inbox = new_inbox  # a deliver subject per consumer: an old one may linger
        self._run: _Run | None = None
        self._idle: asyncio.TimerHandle | None = None

    @property
    def reading(self) -> bool:
        """Whether the feed's consumer is up (or being made)."""
        return self._run is not None and not self._run.ended

    async def open(self, subject: str) -> Watch:
        """Watch `subject` (starting the feed if it is down) until `release`."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        run = self._run
        if run is None or run.ended:
            run = self._run = _Run(self._js, self._new_inbox())
        await asyncio.shield(run.ready)  # one watcher leaving does not stop the start
        return run.add(subject)

    def open_now(self, subject: str) -> Watch | None:
        """Watch `subject` if the feed is reading now (no wait, and no start); else None."""
        run = self._run
        if run is None or run.ended or not run.ready.done() or run.ready.exception():
            return None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        return run.add(subject)

    def release(self, watch: Watch) -> None:
        """Stop watching (again: nothing); the feed stops once idle for its linger."""
        run = watch.run
        if run is None:
            return
        watch.run = None
        run.remove(watch)
        if run is self._run and not run.watches and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self._linger_s, self._stop)

    @asynccontextmanager
    async def watch(self, subject: str) -> AsyncIterator[Watch]:
        """Watch `subject` while the block runs."""
        watch = await self.open(subject)
        try:
            yield watch
        finally:
            self.release(watch)

    def _stop(self) -> None:
        self._idle = None
        run = self._run
        if run is not None and not run.watches:
            self._run = None
            # The consumer is deleted by the reading task as it unwinds.
            run.task.cancel()

    async def close(self) -> None:
        """Stop reading (the gateway is stopping)."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        run, self._run = self._run, None
        if run is not None:
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
