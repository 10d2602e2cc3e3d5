"""What a stack's bus holds, read with its read-only identity: for tests that assert a request
stored nothing, or was audited."""

from __future__ import annotations

from bus import connect
from bus import subjects as s
from bus.audit import AuditRecord
from crucible.audit_tail import tail
from tests.stack import Stack

# Streams a submission writes to; their last sequence moves on any write.
_WRITTEN = (s.JOBS_STREAM, s.JOBS_BUCKET_STREAM, s.RUNS_BUCKET_STREAM, s.IDEMPOTENCY_BUCKET_STREAM)


async def last_writes(stack: Stack) -> dict[str, int]:
    nc = await connect(stack.nats(), "debug", "test-audit")
    try:
        js = nc.jetstream()
        return {name: (await js.stream_info(name)).state.last_seq for name in _WRITTEN}
    finally:
        await nc.close()


async def audit_records(stack: Stack, last: int = 200) -> list[AuditRecord]:
    lines: list[str] = []
    await tail(stack.nats(), None, last, None, False, lines.append, as_json=True)
    return [AuditRecord.model_validate_json(line) for line in lines]
