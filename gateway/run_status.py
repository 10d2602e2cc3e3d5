"""A run as the API shows it: where its jobs are, their verdicts, pass@k.

Each job's newest event comes from one ordered consumer over the run's event subjects with
`LAST_PER_SUBJECT` and headers only: one small message per job that has begun, whatever
its output, and no per-job requests. Jobs with no event yet are queued.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from nats.aio.msg import Msg

from bus import FinishedEvent, RunRecord, Status, Verdict
from bus import subjects as s
from gateway.auth import StreamTokens
from gateway.bus_client import GatewayBus
from gateway.consumers import last_per_subject
from gateway.passk import pass_at_k
from gateway.run_schemas import RunSummary, RunView, StatusCounts


@dataclass(frozen=True)
class RunLinks:
    url: str
    events_url: str
    results_url: str


def run_links(base_url: str, tokens: StreamTokens, record: RunRecord) -> RunLinks:
    """The run's URL, its signed event stream URL, and its results URL."""
    url = f"{base_url.rstrip('/')}/v1/runs/{record.run_id}"
    token = tokens.issue(f"run:{record.run_id}", record.tenant)
    return RunLinks(url=url, events_url=f"{url}/events?token={token}", results_url=f"{url}/results")


@dataclass(frozen=True)
class EventMark:
    """What an event's headers say: whose it is, its kind, and a finished job's verdict."""

    seq: int
    job_id: str
    type: str
    verdict: Verdict | None


async def read_mark(bus: GatewayBus, msg: Msg) -> EventMark:
    """The mark of a headers-only event message (fetching the body only if headers lack it)."""
    seq = msg.metadata.sequence.stream
    job_id = msg.subject.rsplit(".", 1)[1]
    headers = msg.headers or {}
    kind = headers.get(s.EVENT_TYPE_HEADER)
    verdict = headers.get(s.VERDICT_HEADER)
    if kind is None or (kind == "finished" and verdict is None):
        stored = await bus.event_at(seq)  # an event from before headers were added
        if stored is None:
            return EventMark(seq, job_id, "started", None)
        kind = stored.event.type
        if isinstance(stored.event, FinishedEvent):
            verdict = stored.event.result.verdict.value
    return EventMark(seq, job_id, kind, Verdict(verdict) if verdict else None)


async def latest_marks(bus: GatewayBus, run_id: str) -> dict[str, EventMark]:
    """Each begun job's newest event."""
    messages = await last_per_subject(
        bus.js, bus.new_inbox(), s.EVENTS_STREAM, s.run_events_subject(run_id), headers_only=True
    )
    marks = [await read_mark(bus, msg) for msg in messages]
    return {mark.job_id: mark for mark in marks}


async def run_view(
    bus: GatewayBus, record: RunRecord, links: RunLinks, ks: Iterable[int]
) -> RunView:
    """Counts per status and verdict over the run's jobs, and pass@k by `metadata.task_id`."""
    members = await bus.runs.members(record)
    marks = await latest_marks(bus, record.run_id)
    counts = StatusCounts(queued=record.total_jobs - len(members))  # chunks being written
    verdicts: Counter[str] = Counter()
    samples: dict[str, list[int]] = {}
    for member in members:
        mark = marks.get(member.job_id)
        if mark is None:
            counts.queued += 1
        elif mark.type != "finished" or mark.verdict is None:
            counts.running += 1
        else:
            counts.finished += 1
            verdicts[mark.verdict.value] += 1
            if member.task_id is not None:
                tally = samples.setdefault(member.task_id, [0, 0])
                tally[0] += 1
                tally[1] += mark.verdict is Verdict.ACCEPTED
    if counts.finished == record.total_jobs:
        status = Status.FINISHED
    elif counts.running or counts.finished:
        status = Status.RUNNING
    else:
        status = Status.QUEUED
    return RunView(
        id=record.run_id,
        status=status,
        created_at=record.created_at,
        metadata=record.metadata,
        total_jobs=record.total_jobs,
        counts=counts,
        verdicts=dict(sorted(verdicts.items())),
        tasks=len(samples),
        pass_at_k=pass_at_k({task: (n, c) for task, (n, c) in samples.items()}, ks),
        trace_id=record.trace_id,
        url=links.url,
        events_url=links.events_url,
        results_url=links.results_url,
    )


def run_summary(record: RunRecord, base_url: str) -> RunSummary:
    return RunSummary(
        id=record.run_id,
        created_at=record.created_at,
        metadata=record.metadata,
        total_jobs=record.total_jobs,
        url=f"{base_url.rstrip('/')}/v1/runs/{record.run_id}",
    )
