"""The job records this gateway wrote or read last, kept parsed.

A client that posts a job opens its event stream (or asks for it) next, mostly through the
same gateway: each of those requests read the record back from the `jobs` bucket, a round
trip and a parse, for a record the gateway had in hand a moment before. A record is written
once and never changed (the only removal is a failed submission's, before anyone has its id),
so a copy stays right; it is kept a bounded while all the same, well within the bucket's
TTL, after which the bucket answers as it would.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from bus import JobRecord

RECENT_RECORDS = 4096  # ~1 KiB each
RECENT_RECORD_S = 3600.0


class RecentRecords:
    """Job records by id, the newest `RECENT_RECORDS`, each for at most `RECENT_RECORD_S`."""

    def __init__(self) -> None:
        self._records: OrderedDict[str, tuple[float, JobRecord]] = OrderedDict()

    def add(self, record: JobRecord) -> None:
        self._records[record.job_id] = (time.monotonic(), record)
        self._records.move_to_end(record.job_id)
        if len(self._records) > RECENT_RECORDS:
            self._records.popitem(last=False)

    def get(self, job_id: str) -> JobRecord | None:
        found = self._records.get(job_id)
        if found is None:
            return None
        kept_at, record = found
        if time.monotonic() - kept_at > RECENT_RECORD_S:
            del self._records[job_id]
            return None
        return record
