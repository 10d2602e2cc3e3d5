"""What earlier deliveries of a job left in the EVENTS stream, read before running it again.

JetStream counts deliveries, but a delivery is not an attempt (it may have found the bus
without a leader and run nothing), a crashed server may have lost the latest count, and a
worker may have died between storing a result and acking it. The stream itself is the truth:
a stored `finished` means the job is done; otherwise the new attempt numbers past the last
stored one, so its events never share (job, attempt, seq) with an earlier attempt's.

Each attempt then writes only after the event it last saw (`Nats-Expected-Last-Subject-
Sequence`): a worker that lost its job, and whose delayed events arrive late, is refused by
the server instead of adding a second result.

A first delivery does not read it: its first store, conditional on the job having no events,
makes the server do the same check, and a refusal there reads the history after all
(`Worker._process`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bus import JetStreamRequests, JobMessage, decode_event
from bus import subjects as s


@dataclass(frozen=True)
class History:
    finished: bool = False
    last_attempt: int = 0  # 0: nothing stored yet
    last_seq: int = 0  # the newest event's stream sequence: where the next attempt writes after

    def next_attempt(self) -> int:
        """This delivery's attempt number: one past the last that started. A delivery that
        could not start (NATS without a leader for a moment) does not use up an attempt."""
        return self.last_attempt + 1


async def job_history(requests: JetStreamRequests, job: JobMessage) -> History:
    """The job's newest stored event, as far as a redelivery needs to know."""
    last = await requests.last_message(s.EVENTS_STREAM, s.events_subject(job.run_id, job.job_id))
    if last is None:
        return History()
    if last.headers.get(s.EVENT_TYPE_HEADER) == "finished":
        return History(finished=True, last_seq=last.seq)
    return History(last_attempt=decode_event(last.data).attempt, last_seq=last.seq)
