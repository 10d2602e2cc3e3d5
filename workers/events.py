"""Publishing one attempt's events in order, each with its (job, attempt, seq)."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext

from bus import (
    FinishedEvent,
    JobMessage,
    JobResult,
    OutputEvent,
    StartedEvent,
    publish_model,
)
from bus import subjects as s
from sandbox import OutputChunk


class AttemptEvents:
    """Numbers and stores the events of one attempt; awaiting each store keeps them ordered,
    and each store is conditional on the last, so no other attempt's events interleave."""

    def __init__(
        self, js: JetStreamContext, job: JobMessage, attempt: int, worker: str, after_seq: int
    ):
        self._js = js
        self._after_seq = after_seq  # the job's newest stored event: each store must follow it
        self._job = job
        self._attempt = attempt
        self._worker = worker
        self._subject = s.events_subject(job.run_id, job.job_id)
        self._seq = 0

    @property
    def attempt(self) -> int:
        return self._attempt

    def _ids(self) -> dict[str, Any]:
        self._seq += 1
        return {
            "job_id": self._job.job_id,
            "run_id": self._job.run_id,
            "attempt": self._attempt,
            "seq": self._seq,
        }

    async def _store(self, event: StartedEvent | OutputEvent | FinishedEvent) -> None:
        # Type and verdict in headers: a run's progress is counted from headers alone,
        # without fetching every event's body (stdout can be megabytes).
        headers: dict[str, str] = {s.EVENT_TYPE_HEADER: event.type}
        if isinstance(event, FinishedEvent):
            headers[s.VERDICT_HEADER] = event.result.verdict.value
        ack = await publish_model(
            self._js,
            self._subject,
            event,
            msg_id=event.dedup_key,
            extra_headers=headers,
            after_seq=self._after_seq,
        )
        self._after_seq = ack.seq

    async def started(self) -> None:
        await self._store(StartedEvent(worker=self._worker, **self._ids()))

    async def output(self, chunk: OutputChunk) -> None:
        await self._store(
            OutputEvent(type=chunk.stream, data=chunk.data, offset=chunk.offset, **self._ids())
        )

    async def finished(self, result: JobResult) -> None:
        await self._store(FinishedEvent(worker=self._worker, result=result, **self._ids()))
