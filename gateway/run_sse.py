"""A run's events as Server-Sent Events: each job's `finished`, each followed by `progress`.

Ids are EVENTS stream positions, as on a job stream: a `finished` event's id is its
position, and the `progress` after it shares that id (it is a snapshot that the next one
supersedes). The first `progress` (`done` 0) has id 0. Resuming after id N sends what comes
after N: no `finished` lost, none twice. A job re-run after a worker crash counts once.
A stream resumed after the run's end repeats only the final `progress`, so that every
client learns that the run is over.

The counting needs the run's event headers from its start: the clients of a run share one
live tail (`gateway.live_tail`) that reads them once and encodes each `progress` once; a
client that asks for more than the tail still holds replays the headers itself. Results are
fetched (a read of the stream per job) only from where the tail's first client resumed: a
client reconnecting near the end of a 100,000-job run waits for the run's headers to be
counted, not for every result before its `Last-Event-ID` to be read and thrown away.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from sse_starlette import ServerSentEvent

from bus import FinishedEvent, JobRecord, RunRecord
from bus import subjects as s
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.consumers import replay, tail
from gateway.live_tail import LiveTail, Source, follow
from gateway.run_schemas import RunProgress
from gateway.run_status import read_mark
from gateway.schemas import JobView
from gateway.security import FIRST_EVENT_ID
from gateway.sse import finished_frame

FinishedView = Callable[[JobRecord, StoredEvent], JobView]

# What a held `finished` costs beyond its output, for the tail's memory bound.
_ENTRY_OVERHEAD_BYTES = 2048


@dataclass(eq=False)
class RunEntry:
    """One job of the run counted as done: its `finished`, and the `progress` after it."""

    seq: int
    key: str  # the job id: a job counts once
    size: int
    final: bool
    progress: bytes
    job: JobRecord | None = None  # None when not fetched (before a replay's start) or gone
    finished: StoredEvent | None = None
    rendered: dict[str, bytes] = field(default_factory=dict)  # `finished` frames by job URL

    @property
    def shared_frame(self) -> None:
        return None  # its `finished` comes first, with each client's own links


class _Members:
    """The run's job ids, re-read when an event names a job appended since."""

    def __init__(self, bus: GatewayBus, record: RunRecord) -> None:
        self._bus = bus
        self.record = record
        self._ids: set[str] = set()

    async def load(self) -> None:
        found = await self._bus.runs.get(self.record.tenant, self.record.run_id)
        if found is not None:
            self.record = found[0]
        self._ids = {member.job_id for member in await self._bus.runs.members(self.record)}

    async def contains(self, job_id: str) -> bool:
        if job_id not in self._ids:
            await self.load()
        return job_id in self._ids


def _progress(seq: int, done: int, total: int, verdicts: Counter[str]) -> bytes:
    data = RunProgress(done=done, total=total, verdicts=dict(sorted(verdicts.items())))
    return ServerSentEvent(id=str(seq), event="progress", data=data.model_dump_json()).encode()


async def _entries(
    bus: GatewayBus, record: RunRecord, messages: AsyncIterator[Msg], fetch_from_seq: int
) -> AsyncIterator[RunEntry]:
    """The run's entries from `fetch_from_seq` on, with their results, counted from the
    run's start; and the final entry wherever it is (a client resuming after the run's end
    gets its last `progress` again)."""
    members = _Members(bus, record)
    await members.load()
    done: set[str] = set()
    verdicts: Counter[str] = Counter()
    async for msg in messages:
        mark = await read_mark(bus, msg)
        if mark.type != "finished" or mark.verdict is None or mark.job_id in done:
            continue
        if not await members.contains(mark.job_id):
            continue  # a job of a submission that failed and was taken back
        done.add(mark.job_id)
        verdicts[mark.verdict.value] += 1
        total = members.record.total_jobs
        final = False
        if len(done) >= total:
            await members.load()  # jobs may have been appended meanwhile
            final = len(done) >= members.record.total_jobs
        if mark.seq < fetch_from_seq and not final:
            continue  # counted; a tail or replay starting later holds no such entry
        progress = _progress(mark.seq, len(done), total, verdicts)
        entry = RunEntry(mark.seq, mark.job_id, len(progress), final, progress)
        if mark.seq >= fetch_from_seq:
            entry.finished = await bus.event_at(mark.seq)
            entry.job = await bus.record(mark.job_id)
            if entry.finished is not None and isinstance(entry.finished.event, FinishedEvent):
                result = entry.finished.event.result
                entry.size += len(result.stdout) + len(result.stderr) + _ENTRY_OVERHEAD_BYTES
        yield entry
        if final:
            return


def _source(bus: GatewayBus, record: RunRecord, live: bool) -> Source[RunEntry]:
    """The run's entries live (for its tail), or up to what is stored (for a replay)."""
    read = tail if live else replay

    @asynccontextmanager
    async def entries(start_seq: int) -> AsyncIterator[AsyncIterator[RunEntry]]:
        async with read(
            bus.js,
            bus.new_inbox(),
            s.EVENTS_STREAM,
            s.run_events_subject(record.run_id),
            # Counting starts at the run's start, whatever the client has seen.
            start_seq=record.events_after_seq + 1,
            headers_only=True,  # stdout chunks pass by as headers, never as megabytes
        ) as messages:
            yield _entries(bus, record, messages, start_seq)

    return entries


def _finished_frame(entry: RunEntry, finished_view: FinishedView) -> bytes | None:
    if entry.job is None or entry.finished is None:
        return None  # aged out of the stream, or the record expired
    return finished_frame(entry.rendered, entry.seq, finished_view(entry.job, entry.finished))


async def run_event_stream(
    bus: GatewayBus, record: RunRecord, last_event_id: int | None, finished_view: FinishedView
) -> AsyncIterator[bytes]:
    """Every `finished` (and `progress`) after `last_event_id`, ending after the last job."""
    if last_event_id is None:
        yield _progress(FIRST_EVENT_ID, 0, record.total_jobs, Counter())
    after = FIRST_EVENT_ID if last_event_id is None else last_event_id

    def make() -> LiveTail[RunEntry]:
        # It counts from the run's start, and holds the entries from where this client
        # resumes: a client joining it later that wants older ones replays them.
        return LiveTail("run", _source(bus, record, live=True), after + 1)

    subject = s.run_events_subject(record.run_id)
    async for batch in follow(bus.tails, subject, after, make, _source(bus, record, live=False)):
        frames: list[bytes] = []
        for entry in batch:
            if entry.seq > after:
                frame = _finished_frame(entry, finished_view)
                if frame is not None:
                    frames.append(frame)
            # A final entry not after `after` means the client resumed after the run's end:
            # the final `progress` (sharing its id) may be what it missed, so it comes again;
            # it is a snapshot, a repeat is harmless.
            frames.append(entry.progress)
        yield b"".join(frames)
