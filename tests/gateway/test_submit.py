"""Submitting one job (real nats-server): the job is enqueued, then its record stored; a job
whose record cannot be stored is taken back (cancelled, and never visible); the record is
then served from the gateway's memory to the requests that follow."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from bus import (
    BusUnavailableError,
    JobMessage,
    JobRecord,
    JobSpec,
    new_job_id,
    new_run_id,
    utc_now,
)
from bus import subjects as s
from gateway import recent_records
from gateway.bus_client import GatewayBus


def new_job(tenant: str = "local") -> tuple[JobRecord, JobMessage]:
    record = JobRecord(
        job_id=new_job_id(),
        run_id=new_run_id(),
        tenant=tenant,
        language="python",
        submitted_at=utc_now(),
    )
    spec = JobSpec(language="python", code="print(1)")
    message = JobMessage(
        job_id=record.job_id,
        run_id=record.run_id,
        tenant=tenant,
        spec=spec,
        submitted_at=record.submitted_at,
    )
    return record, message


async def test_a_job_whose_record_cannot_be_stored_is_never_run_nor_seen(
    bus: GatewayBus, debug: JetStreamContext
) -> None:
    # The records' bucket refuses every record (too large for it), the job queue does not.
    info = await bus.js.stream_info(s.JOBS_BUCKET_STREAM)
    info.config.max_msg_size = 16
    await bus.js.update_stream(info.config)
    record, message = new_job()
    with pytest.raises(BusUnavailableError, match="could not store job"):
        await bus.submit(record, message)
    assert await bus.record(record.job_id) is None
    # Not queued, or queued and cancelled: a worker would finish it `cancelled` unrun.
    if await bus.unfinished(record.tenant):
        cancels = await debug.key_value(s.CANCELS_BUCKET)  # workers read it; the gateway writes
        assert (await cancels.get(record.job_id)).value is not None


async def test_a_stored_record_is_served_from_memory_for_a_while(
    bus: GatewayBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, message = new_job()
    await bus.submit(record, message)
    jobs = await bus.js.key_value(s.JOBS_BUCKET)
    assert (await jobs.get(record.job_id)).value == record.model_dump_json().encode()
    # Gone from the bucket (as it would be past its TTL): this gateway still has it...
    await jobs.purge(record.job_id)
    with pytest.raises(KeyNotFoundError):
        await jobs.get(record.job_id)
    assert await bus.record(record.job_id) == record
    # ...for a while only, then the bucket answers again.
    monkeypatch.setattr(recent_records, "RECENT_RECORD_S", 0.0)
    assert await bus.record(record.job_id) is None
