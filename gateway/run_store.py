"""Run records and their job lists in the `runs` bucket, keyed by tenant.

Keys carry the tenant (`<tenant>.<run>`), so a lookup with the caller's tenant cannot find
another tenant's run, and one tenant's runs are listed without reading anyone else's.
Appends reserve their chunk with a compare-and-set on the record, so concurrent appends to
one run each get their own chunk and the total stays exact.
"""

from __future__ import annotations

import asyncio

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus import BusUnavailableError, RunChunk, RunMember, RunRecord
from bus import subjects as s

_CAS_ATTEMPTS = 50


def _unavailable(what: str, exc: Exception) -> BusUnavailableError:
    return BusUnavailableError(f"could not {what}: {exc!r}")


class RunStore:
    """The gateway's access to the `runs` bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, tenant: str, run_id: str) -> tuple[RunRecord, int] | None:
        """The run's record and its revision (for compare-and-set), or None."""
        try:
            entry = await self._kv.get(s.run_key(tenant, run_id))
        except KeyNotFoundError:
            return None
        except Exception as exc:
            raise _unavailable(f"read run {run_id}", exc) from exc
        if entry.value is None or entry.revision is None:
            return None
        return RunRecord.model_validate_json(entry.value), entry.revision

    async def create(self, record: RunRecord) -> None:
        """Store a new run's record (with its first chunk already counted)."""
        try:
            await self._kv.create(s.run_key(record.tenant, record.run_id), _json(record))
        except Exception as exc:
            raise _unavailable(f"create run {record.run_id}", exc) from exc

    async def reserve_chunk(self, tenant: str, run_id: str, jobs: int) -> RunRecord | None:
        """Count `jobs` more jobs in a new chunk; the returned record's `chunks - 1` is its
        index. None when the run does not exist."""
        for _ in range(_CAS_ATTEMPTS):
            found = await self.get(tenant, run_id)
            if found is None:
                return None
            record, revision = found
            updated = record.model_copy(
                update={"chunks": record.chunks + 1, "total_jobs": record.total_jobs + jobs}
            )
            try:
                await self._kv.update(s.run_key(tenant, run_id), _json(updated), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another append won the race: count on top of its update
            except Exception as exc:
                raise _unavailable(f"extend run {run_id}", exc) from exc
            return updated
        raise BusUnavailableError(f"run {run_id} is being extended by too many requests at once")

    async def release_chunk(self, tenant: str, run_id: str, jobs: int) -> None:
        """Undo a reservation whose jobs could not be queued; its chunk index stays unused."""
        for _ in range(_CAS_ATTEMPTS):
            found = await self.get(tenant, run_id)
            if found is None:
                return
            record, revision = found
            updated = record.model_copy(update={"total_jobs": max(record.total_jobs - jobs, 0)})
            try:
                await self._kv.update(s.run_key(tenant, run_id), _json(updated), last=revision)
                return
            except KeyWrongLastSequenceError:
                continue

    async def delete(self, tenant: str, run_id: str) -> None:
        """Forget a run that could not be queued at all."""
        await self._kv.purge(s.run_key(tenant, run_id))

    async def put_chunk(self, tenant: str, chunk: RunChunk) -> None:
        try:
            await self._kv.put(s.run_chunk_key(tenant, chunk.run_id, chunk.index), _json(chunk))
        except Exception as exc:
            raise _unavailable(f"store the job list of run {chunk.run_id}", exc) from exc

    async def delete_chunk(self, tenant: str, run_id: str, index: int) -> None:
        await self._kv.purge(s.run_chunk_key(tenant, run_id, index))

    async def members(self, record: RunRecord) -> list[RunMember]:
        """Every job of the run, in submission order (chunks of failed appends are absent)."""
        chunks = await asyncio.gather(
            *(self._chunk(record, index) for index in range(record.chunks))
        )
        return [member for chunk in chunks if chunk is not None for member in chunk.jobs]

    async def _chunk(self, record: RunRecord, index: int) -> RunChunk | None:
        try:
            entry = await self._kv.get(s.run_chunk_key(record.tenant, record.run_id, index))
        except KeyNotFoundError:
            return None  # reserved and not yet written, or given up
        except Exception as exc:
            raise _unavailable(f"read the job list of run {record.run_id}", exc) from exc
        return None if entry.value is None else RunChunk.model_validate_json(entry.value)


def _json(model: RunRecord | RunChunk) -> bytes:
    return model.model_dump_json().encode()
