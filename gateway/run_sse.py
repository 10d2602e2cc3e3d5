"""A run's events as Server-Sent Events: each job's `finished`, each followed by `progress`.

Ids are EVENTS stream positions, as on a job stream: a `finished` event's id is its
position, and the `progress` after it shares that id (it is a snapshot that the next one
supersedes). The first `progress` (`done` 0) has id 0. Resuming after id N replays the
run's event headers up to N silently, to know which jobs were done by then, and sends the
rest: no `finished` lost, none twice. A job re-run after a worker crash counts once.
A stream resumed after the run's end repeats only the final `progress`, so that every
client learns that the run is over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable

from sse_starlette import ServerSentEvent

from bus import JobRecord, RunRecord
from bus import subjects as s
from gateway.bus_client import GatewayBus, StoredEvent
from gateway.consumers import tail
from gateway.run_schemas import RunProgress
from gateway.run_status import read_mark
from gateway.schemas import JobView
from gateway.security import FIRST_EVENT_ID

FinishedView = Callable[[JobRecord, StoredEvent], JobView]


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


def _progress(seq: int, done: int, total: int, verdicts: Counter[str]) -> ServerSentEvent:
    data = RunProgress(done=done, total=total, verdicts=dict(sorted(verdicts.items())))
    return ServerSentEvent(id=str(seq), event="progress", data=data.model_dump_json())


async def run_event_stream(
    bus: GatewayBus, record: RunRecord, last_event_id: int | None, finished_view: FinishedView
) -> AsyncIterator[ServerSentEvent]:
    """Every `finished` (and `progress`) after `last_event_id`, ending after the last job."""
    members = _Members(bus, record)
    await members.load()
    done: set[str] = set()
    verdicts: Counter[str] = Counter()
    last_seq = FIRST_EVENT_ID
    sent_any = False
    if last_event_id is None:
        yield _progress(FIRST_EVENT_ID, 0, members.record.total_jobs, verdicts)
    async with tail(
        bus.js,
        bus.new_inbox(),
        s.EVENTS_STREAM,
        s.run_events_subject(record.run_id),
        start_seq=record.events_after_seq + 1,
        headers_only=True,  # stdout chunks pass by as headers, never as megabytes
    ) as messages:
        async for msg in messages:
            mark = await read_mark(bus, msg)
            if mark.type != "finished" or mark.verdict is None or mark.job_id in done:
                continue
            if not await members.contains(mark.job_id):
                continue  # a job of a submission that failed and was taken back
            done.add(mark.job_id)
            verdicts[mark.verdict.value] += 1
            last_seq = mark.seq
            if last_event_id is None or mark.seq > last_event_id:
                sent_any = True
                stored = await bus.event_at(mark.seq)
                job = await bus.record(mark.job_id)
                if stored is not None and job is not None:
                    data = finished_view(job, stored).model_dump_json(exclude={"events_url"})
                    yield ServerSentEvent(id=str(mark.seq), event="finished", data=data)
                yield _progress(mark.seq, len(done), members.record.total_jobs, verdicts)
            if len(done) >= members.record.total_jobs:
                await members.load()  # jobs may have been appended meanwhile
                if len(done) >= members.record.total_jobs:
                    break
    if not sent_any and last_event_id is not None:
        # Resumed after the last `finished`: the final `progress` (sharing its id) may be
        # what the client missed, so send it again; it is a snapshot, a repeat is harmless.
        yield _progress(last_seq, len(done), members.record.total_jobs, verdicts)
