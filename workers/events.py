"""Storing one attempt's events in order, each with its (job, attempt, seq), beside the run.

Every store is conditional on the one before it (`Nats-Expected-Last-Subject-Sequence`), so no
other attempt's events can interleave; that makes the stores a chain of round trips. The chain
runs in a writer task beside the sandbox instead of in its way: `started` is stored while the
program starts, output is queued as it is produced, and output that arrives while a store is
in flight is coalesced with the output queued before it (same stream, contiguous bytes, up to
a bound) into one event. A chatty program so costs a store per round trip, not one per write,
and the sandbox never waits on the bus unless a megabyte is queued. `finished` is stored only
after everything before it. A refused or failed store ends the attempt: nothing more of it is
stored, and `finished` raises the error. The run itself is not stopped for it: it ends within
its limits, and stopping a sandbox in the middle of its start is the one moment its clean-up
is not sure to work.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bus import (
    FinishedEvent,
    JetStreamRequests,
    JobMessage,
    JobResult,
    OutputEvent,
    StartedEvent,
    SupersededError,
)
from bus import subjects as s
from observability.propagation import inject_headers
from sandbox import OutputChunk
from sandbox.models import Stream

# One coalesced output event carries at most this much data (a read is at most 64 KiB), so
# that even JSON-escaped it stays far below the bus's 8 MiB message limit.
MAX_EVENT_BYTES = 256 * 1024
# Output queued for storing beyond this makes the sandbox's reader wait (back-pressure), so a
# job's output never piles up in the worker's memory faster than the bus takes it.
MAX_QUEUED_BYTES = 1024 * 1024


class StaleHistoryError(SupersededError):
    """The attempt's first store was refused: the job's history moved past the point this
    attempt was numbered from, before it stored anything."""


@dataclass
class _Output:
    """Queued output of one stream: consecutive chunks, contiguous in bytes."""

    stream: Stream
    offset: int
    end: int  # the byte offset just past the last chunk
    parts: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.end - self.offset


class AttemptEvents:
    """Numbers and stores the events of one attempt, in order, off the sandbox's path."""

    def __init__(
        self,
        requests: JetStreamRequests,
        job: JobMessage,
        attempt: int,
        worker: str,
        after_seq: int,
    ):
        self._requests = requests
        # Every event of the attempt carries the trace context current when it is made (the
        # attempt's span): the writer task runs in a copy of it, `finished` in it.
        self._trace_headers = inject_headers()
        self._after_seq = after_seq  # the job's newest stored event: each store must follow it
        self._stored_any = False
        self._job = job
        self._attempt = attempt
        self._worker = worker
        self._subject = s.events_subject(job.run_id, job.job_id)
        self._seq = 0
        self._queue: deque[_Output | None] = deque()  # None: `started`
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    @property
    def attempt(self) -> int:
        return self._attempt

    def started(self) -> None:
        """Queue `started`; it is stored while the sandbox starts."""
        self._queue.append(None)
        self._wake()

    async def output(self, chunk: OutputChunk) -> None:
        """Queue a chunk of output, merged into the queued output before it where it can be."""
        if self._failure is not None:
            return  # the attempt is void: `finished` raises why
        size = len(chunk.data.encode())
        last = self._queue[-1] if self._queue else None
        if (
            isinstance(last, _Output)
            and last.stream == chunk.stream
            and last.end == chunk.offset
            and last.size + size <= MAX_EVENT_BYTES
        ):
            last.parts.append(chunk.data)
            last.end += size
        else:
            self._queue.append(
                _Output(chunk.stream, chunk.offset, chunk.offset + size, [chunk.data])
            )
        self._queued_bytes += size
        self._wake()
        if self._queued_bytes > MAX_QUEUED_BYTES:
            await self._flush()

    async def finished(self, result: JobResult) -> None:
        """Store `finished` once everything queued before it is stored."""
        await self._flush()
        await self._store(FinishedEvent(worker=self._worker, result=result, **self._ids()))

    def abandon(self) -> None:
        """Store nothing more: the attempt was handed back to the queue."""
        self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()

    def _wake(self) -> None:
        if self._writer is None and self._failure is None:
            self._writer = asyncio.create_task(self._write())

    async def _flush(self) -> None:
        # Shielded: a cancelled reader (the run being stopped) must not cut a store in half.
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._failure is not None:
            raise self._failure

    async def _write(self) -> None:
        try:
            while self._queue:
                item = self._queue.popleft()
                if not isinstance(item, _Output):
                    await self._store(StartedEvent(worker=self._worker, **self._ids()))
                    continue
                self._queued_bytes -= item.size
                data = "".join(item.parts)
                await self._store(
                    OutputEvent(type=item.stream, data=data, offset=item.offset, **self._ids())
                )
        except Exception as exc:
            self._failure = exc
            self._queue.clear()
            self._queued_bytes = 0
        finally:
            self._writer = None

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
        headers = {
            **self._trace_headers,
            s.EVENT_TYPE_HEADER: event.type,
            "Nats-Msg-Id": event.dedup_key,  # JetStream drops a re-publish of this event
            # Stored only if the job's newest event is still the one this attempt last saw.
            "Nats-Expected-Last-Subject-Sequence": str(self._after_seq),
        }
        if isinstance(event, FinishedEvent):
            headers[s.VERDICT_HEADER] = event.result.verdict.value
        try:
            ack = await self._requests.store(
                self._subject, event.model_dump_json().encode(), headers
            )
            if ack.duplicate:
                # Another delivery stored this very (job, attempt, seq): not ours to follow.
                raise SupersededError(f"{self._subject}: {event.dedup_key} is stored already")
        except SupersededError as exc:
            if not self._stored_any:
                raise StaleHistoryError(str(exc)) from exc
            raise
        self._after_seq = ack.seq
        self._stored_any = True
