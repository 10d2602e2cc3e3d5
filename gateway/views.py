"""A job as the API shows it, derived from its record and its newest event."""

from __future__ import annotations

from dataclasses import dataclass

from bus import FinishedEvent, JobRecord, Status
from gateway.auth import StreamTokens
from gateway.bus_client import StoredEvent
from gateway.schemas import JobView, QueuedData, Timings


@dataclass(frozen=True)
class JobLinks:
    url: str
    events_url: str


def job_links(base_url: str, tokens: StreamTokens, record: JobRecord) -> JobLinks:
    """The job's URL and its event stream's URL, signed for the job's tenant."""
    token = tokens.issue(f"job:{record.job_id}", record.tenant)
    url = f"{base_url.rstrip('/')}/v1/jobs/{record.job_id}"
    return JobLinks(url=url, events_url=f"{url}/events?token={token}")


def queued_data(record: JobRecord) -> QueuedData:
    return QueuedData(job_id=record.job_id, run_id=record.run_id, queued_at=record.submitted_at)


def job_view(record: JobRecord, last: StoredEvent | None, links: JobLinks) -> JobView:
    """Status follows the last event: none yet is queued, `finished` is final, else running."""
    view = JobView(
        id=record.job_id,
        run_id=record.run_id,
        status=Status.QUEUED,
        language=record.language,
        timings=Timings(queued_at=record.submitted_at),
        trace_id=record.trace_id,
        metadata=record.metadata,
        url=links.url,
        events_url=links.events_url,
    )
    if last is None:
        return view
    event = last.event
    view.attempts = event.attempt
    if not isinstance(event, FinishedEvent):
        view.status = Status.RUNNING
        return view
    result = event.result
    view.status = Status.FINISHED
    view.worker = event.worker
    view.verdict = result.verdict
    view.exit_code = result.exit_code
    view.signal = result.signal
    view.reason = result.reason
    view.stdout = result.stdout
    view.stderr = result.stderr
    view.memory_peak_mb = result.memory_peak_mb
    view.tests = result.tests or None
    view.timings = Timings(
        queued_at=record.submitted_at,
        started_at=result.started_at,
        finished_at=result.finished_at,
        wall_time_s=result.wall_time_s,
        cpu_time_s=result.cpu_time_s,
    )
    return view
