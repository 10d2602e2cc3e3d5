"""One live tail per followed stream, shared by all the clients that follow it.

However many clients follow a job (or a run), the gateway reads its events once (a job's
from the gateway's event feed, a run's through a JetStream consumer), parses each message
once and encodes each SSE frame once: the tail keeps the entries it made in a bounded ring,
and every client walks that ring with its own cursor. A client that asks for events older
than the ring holds (it resumes with an old `Last-Event-ID`, joins a tail that started
later, or fell so far behind that the ring moved past it) replays them from JetStream on its
own, up to the first stream position the ring still covers, and then reads on from the
ring: positions are stream sequences, so the seam has no gap and no repeat. A slow client
costs the others nothing: the tail never waits for a client, and memory stays within the
ring's bounds.

A client that has caught up and whose connection can take a write at once (`Push`) does
not wait for its turn at all: the tail writes each new entry's frame to it directly, in one
loop over such clients per batch of entries, and the client's task sleeps until the tail
hands it back (at an entry each client renders itself, such as the final one, at the end, or
when its connection's buffer is full, where the task waits for it to drain). With a thousand
clients on a job, a line of output costs a thousand writes, not a thousand task wake-ups,
each through a stack of generators, each with its write.

The tail stops reading when it has made its final entry, and is torn down (it stops
reading) when its last client leaves.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, Protocol, TypeVar, cast

from prometheus_client import Gauge

from bus import BusUnavailableError

log = logging.getLogger(__name__)

LIVE_TAILS = Gauge(
    "crucible_sse_live_tails",
    "Shared live tails reading events now (a job's from the event feed, a run's through a "
    "JetStream consumer of its own).",
    ["stream"],
)

# Per tail, however many clients follow it: enough for a job's whole output at the default
# cap (1 MiB) so that late joiners rarely need a replay consumer, small enough that a few
# hundred followed jobs stay well within the gateway's memory.
RETAIN_ENTRIES = 4096
RETAIN_BYTES = 2 * 1024 * 1024


class Entry(Protocol):
    """What a tail holds for one stream position: a frame to send (or what renders it)."""

    @property
    def seq(self) -> int:
        """Its stream position (the SSE id); entries come in increasing positions."""

    @property
    def key(self) -> str:
        """What makes two entries at different positions the same event (a re-publish)."""

    @property
    def size(self) -> int:
        """Bytes it holds, for the ring's bound."""

    @property
    def final(self) -> bool:
        """Nothing follows it: the stream ends here."""

    @property
    def shared_frame(self) -> bytes | None:
        """Its frame when every client gets the same bytes (the tail may push it); None when
        each client renders its own."""


class Push(Protocol):
    """A client's connection, written to by the tail without a turn of the client's task."""

    def __call__(self, frames: bytes) -> bool:
        """Write `frames` now if the connection takes them without waiting; False (nothing
        written) if it cannot: its buffer is full, or it is gone."""


E = TypeVar("E", bound=Entry)

# Entries from stream position `start_seq` on, in order: a live tail's, or a replay's, which
# ends once it has caught up with what the stream held when it began.
Source = Callable[[int], AbstractAsyncContextManager[AsyncIterator[E]]]

_tasks_closing: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references


class Lapped(Exception):
    """The ring moved past a cursor: its client must replay what it missed."""


class _Ring(Generic[E]):
    """Entries by absolute index, the oldest dropped past the bounds; slices cost what they
    return (a deque's would walk from an end)."""

    def __init__(self, retain_entries: int, retain_bytes: int) -> None:
        self._retain_entries = retain_entries
        self._retain_bytes = retain_bytes
        self._items: list[E | None] = []
        self._offset = 0  # the absolute index of _items[0]
        self.base = 0  # the absolute index of the oldest entry held
        self._bytes = 0

    @property
    def end(self) -> int:
        return self._offset + len(self._items)

    def last(self) -> E | None:
        return self._items[-1] if self.end > self.base else None

    def since(self, index: int) -> list[E]:
        """The held entries from absolute `index` on (`index` >= `base`)."""
        return cast("list[E]", self._items[index - self._offset :])

    def first_after(self, seq: int) -> int:
        """The absolute index of the first held entry with a position after `seq`."""
        lo = self.base - self._offset
        return self._offset + bisect.bisect_right(self._items, seq, lo=lo, key=_seq)

    def append(self, entry: E) -> E | None:
        """Hold `entry`; return the newest entry dropped to stay within the bounds, if any."""
        self._items.append(entry)
        self._bytes += entry.size
        dropped = None
        while self.end - self.base > 1 and (
            self.end - self.base > self._retain_entries or self._bytes > self._retain_bytes
        ):
            dropped = self._items[self.base - self._offset]
            assert dropped is not None
            self._items[self.base - self._offset] = None
            self._bytes -= dropped.size
            self.base += 1
        if self.base - self._offset > len(self._items) // 2:
            del self._items[: self.base - self._offset]
            self._offset = self.base
        return dropped


def _seq(entry: Entry | None) -> int:
    assert entry is not None
    return entry.seq


class LiveTail(Generic[E]):
    """One stream's entries from `start_seq` on, read once, held in a bounded ring."""

    def __init__(
        self,
        stream: str,
        source: Source[E],
        start_seq: int,
    ) -> None:
        self._stream = stream
        self._source = source
        self.ring = _Ring[E](RETAIN_ENTRIES, RETAIN_BYTES)
        # Every entry from this position on is in the ring or still to come.
        self.first_seq = start_seq
        self.members = 0
        self.ended = False
        self.error: BusUnavailableError | None = None
        self._more = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Clients at the live edge that the tail writes to itself, with what they wait on.
        self._pushed: dict[Cursor[E], tuple[Push, asyncio.Future[None]]] = {}
        self._push_due = False

    def start(self) -> None:
        LIVE_TAILS.labels(self._stream).inc()
        self._task = asyncio.create_task(self._read(), name=f"live tail ({self._stream})")
        self._task.add_done_callback(lambda _: LIVE_TAILS.labels(self._stream).dec())

    def close(self) -> None:
        """Stop reading; the reading task lets go of its source on its own time."""
        if self._task is not None and not self._task.done():
            # Not awaited: the caller may be a client's task being cancelled, where an await
            # would be cancelled again before the source is let go of (a consumer deleted).
            self._task.cancel()
            _tasks_closing.add(self._task)
            self._task.add_done_callback(_tasks_closing.discard)

    @property
    def broken(self) -> bool:
        """It stopped before its final entry: new clients need a new tail."""
        last = self.ring.last()
        return self.ended and not (last is not None and last.final)

    async def _read(self) -> None:
        try:
            async with self._source(self.first_seq) as entries:
                async for entry in entries:
                    dropped = self.ring.append(entry)
                    if dropped is not None:
                        self.first_seq = dropped.seq + 1
                    self._wake()
                    if entry.final:
                        return
            self.error = BusUnavailableError("the event stream's consumer stopped")
        except BusUnavailableError as exc:
            self.error = exc
        except Exception as exc:  # nats-py raises several unrelated types
            log.warning("a live tail (%s) failed: %r", self._stream, exc)
            self.error = BusUnavailableError(f"reading events failed: {exc!r}")
        finally:
            self.ended = True
            self._wake()

    def _wake(self) -> None:
        # Clients that woke for one entry and find several send them in one write.
        self._more.set()
        self._more = asyncio.Event()
        if self._pushed and not self._push_due:
            # Soon, not now: the entries that came with the same read of the socket go out
            # together, one write per client.
            self._push_due = True
            asyncio.get_running_loop().call_soon(self._push)

    async def wait(self) -> None:
        """Until the next entry (or the end)."""
        await self._more.wait()

    async def pushed(self, cursor: Cursor[E], push: Push) -> None:
        """Write the entries after `cursor` (which has caught up) through `push` as they
        come, moving the cursor past them, until the tail hands the client back."""
        released = asyncio.get_running_loop().create_future()
        self._pushed[cursor] = (push, released)
        try:
            await released
        finally:
            self._pushed.pop(cursor, None)

    def _push(self) -> None:
        self._push_due = False
        ring = self.ring
        made: dict[int, tuple[bytes, int, int]] = {}  # per start: frames, next index, last seq
        for cursor, (push, released) in list(self._pushed.items()):
            start = cursor.index
            if start < ring.base:
                released.set_result(None)  # lapped: its task replays what it missed
                continue
            found = made.get(start)
            if found is None:
                found = made[start] = self._shared_from(start)
            frames, stop, last_seq = found
            if frames:
                try:
                    taken = push(frames)
                except Exception as exc:  # one broken connection must not stop the others
                    log.debug("a push to a client of %s failed: %r", self._stream, exc)
                    taken = False
                if not taken:
                    released.set_result(None)  # its task waits for the connection instead
                    continue
                cursor.index, cursor.pushed_through = stop, last_seq
            if stop < ring.end or self.ended:
                released.set_result(None)  # an entry it renders itself, or the end

    def _shared_from(self, start: int) -> tuple[bytes, int, int]:
        """The frames of the entries from absolute `start` on up to the first that each
        client renders itself, the index after them, and the last one's position."""
        frames: list[bytes] = []
        last_seq = 0
        for entry in self.ring.since(start):
            frame = entry.shared_frame
            if frame is None or entry.final:
                break
            frames.append(frame)
            last_seq = entry.seq
        return b"".join(frames), start + len(frames), last_seq


class Cursor(Generic[E]):
    """One client's place in a tail's ring."""

    def __init__(self, tail: LiveTail[E]) -> None:
        self._tail = tail
        self.index = tail.ring.base  # absolute, in the tail's ring
        self.pushed_through = 0  # the position of the last entry the tail pushed to it

    def rewind(self, after_seq: int) -> int:
        """Move to the first held entry after `after_seq`; the position from which on the
        ring has (or will have) every entry: anything before it must come from a replay."""
        ring = self._tail.ring
        self.index = ring.first_after(after_seq)
        last = ring.last()
        if self.index == ring.end and last is not None and last.final:
            # A client that resumes after the end gets the final entry again, which tells it
            # that the stream is over.
            self.index -= 1
        return self._tail.first_seq

    async def batches(self, push: Push | None = None) -> AsyncIterator[list[E]]:
        """The entries from the cursor on, as many at a time as there are, live, until the
        final one; `Lapped` if the ring moves past the cursor while its client is busy.
        With `push`, what the tail can push to the client once it has caught up goes that
        way instead (see `pushed_through`)."""
        tail = self._tail
        ring = tail.ring
        while True:
            if self.index < ring.base:
                raise Lapped
            if self.index < ring.end:
                batch = ring.since(self.index)
                self.index = ring.end
                yield batch
            elif tail.ended:
                raise tail.error or BusUnavailableError("the event stream ended early")
            elif push is not None:
                await tail.pushed(self, push)
            else:
                await tail.wait()


class LiveTails:
    """The gateway's tails, one per followed stream, each alive while clients follow it."""

    def __init__(self) -> None:
        self._tails: dict[str, LiveTail[Any]] = {}

    def __len__(self) -> int:
        return len(self._tails)

    @asynccontextmanager
    async def join(self, key: str, make: Callable[[], LiveTail[E]]) -> AsyncIterator[Cursor[E]]:
        """A cursor on the tail of `key` (made by `make` if there is none), for one client."""
        found = self._tails.get(key)
        if found is None or found.broken:
            tail = make()
            self._tails[key] = tail
            tail.start()
        else:
            tail = cast("LiveTail[E]", found)
        tail.members += 1
        try:
            yield Cursor(tail)
        finally:
            tail.members -= 1
            if tail.members == 0:
                if self._tails.get(key) is tail:
                    del self._tails[key]
                tail.close()


async def follow(
    tails: LiveTails,
    key: str,
    after_seq: int,
    make: Callable[[], LiveTail[E]],
    replay: Source[E],
    push: Push | None = None,
) -> AsyncIterator[list[E]]:
    """Every entry after stream position `after_seq`, each once and in order, up to and
    including the final one (which comes even when it is not after `after_seq`, so that a
    client that has seen everything still learns that the stream is over); in batches of
    what is there to send at once. With `push`, entries every client gets alike may go
    straight to the client's connection instead, in the same order."""
    replayed: set[str] = set()  # events that a replay sent: a re-publish in the ring is skipped
    async with tails.join(key, make) as cursor:
        while True:
            covered_from = cursor.rewind(after_seq)
            if after_seq + 1 < covered_from:
                async with replay(after_seq + 1) as entries:
                    async for entry in entries:
                        if entry.seq >= covered_from:
                            break  # the ring has it
                        if entry.seq > after_seq or entry.final:
                            replayed.add(entry.key)
                            yield [entry]
                            after_seq = max(after_seq, entry.seq)
                        if entry.final:
                            return
            try:
                # Not after a replay: the ring may hold a re-publish of an event it sent.
                async for batch in cursor.batches(None if replayed else push):
                    if not replayed and batch[0].seq > after_seq:
                        sent = batch  # as it comes, the usual case
                    else:
                        sent = [
                            entry
                            for entry in batch
                            if (entry.seq > after_seq and entry.key not in replayed) or entry.final
                        ]
                    if sent:
                        yield sent
                        after_seq = max(after_seq, sent[-1].seq)
                        if sent[-1].final:
                            return
            except Lapped:
                after_seq = max(after_seq, cursor.pushed_through)
                log.debug("a slow client of %s fell behind its live tail; it replays", key)
