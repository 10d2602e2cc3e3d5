"""Idempotency-Key: the same key from the same tenant, within the window, is the same job."""

from __future__ import annotations

import hashlib

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from bus import BusUnavailableError

MAX_KEY_CHARS = 255


class Claim(BaseModel):
    """What a key stands for: the job it created and the request that created it."""

    job_id: str
    request_sha256: str


def _slot(tenant: str, key: str) -> str:
    # Hashed: a key is any client string, a KV key must be subject-safe; and tenants apart.
    return hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def claim(self, tenant: str, key: str, claim: Claim) -> Claim | None:
        """Take `key` for `claim`; when it is taken already, the claim that holds it."""
        slot = _slot(tenant, key)
        try:
            await self._kv.create(slot, claim.model_dump_json().encode())
            return None
        except KeyWrongLastSequenceError:
            pass
        except Exception as exc:
            raise BusUnavailableError(f"could not record an Idempotency-Key: {exc!r}") from exc
        try:
            entry = await self._kv.get(slot)
        except KeyNotFoundError:
            return None  # expired between the two calls: ours to take next time
        assert entry.value is not None
        return Claim.model_validate_json(entry.value)

    async def release(self, tenant: str, key: str) -> None:
        """Free a key whose job could not be queued, so that a retry can succeed."""
        try:
            await self._kv.purge(_slot(tenant, key))
        except Exception:  # the window's TTL frees it anyway
            return
