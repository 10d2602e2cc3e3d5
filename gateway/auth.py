"""API keys (Bearer) and the signed, expiring tokens that let a browser open one event stream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

from pydantic import BaseModel, Field


class Principal(BaseModel):
    """Who is calling: a tenant, through one of its keys."""

    tenant: str
    key_id: str


# Tenant names appear in NATS subjects (`crucible.jobs.<tenant>`, `crucible.audit.<tenant>`):
# letters, digits, `-` and `_`, not starting with `_` (kept for Crucible's own tokens).
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class ApiKeyEntry(BaseModel):
    """One key as stored: only its SHA-256, never the key itself."""

    key_id: str = Field(min_length=1, max_length=64)
    tenant: str = Field(pattern=TENANT_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ApiKeysFile(BaseModel):
    """The keys file (`CRUCIBLE_API_KEYS_FILE`)."""

    keys: list[ApiKeyEntry]


def hash_key(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """Looks keys up by hash; keys are long random strings, so a plain SHA-256 suffices."""

    def __init__(self, entries: list[ApiKeyEntry]) -> None:
        self._by_hash = {entry.sha256: entry for entry in entries}

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        return cls(ApiKeysFile.model_validate_json(path.read_text()).keys)

    def authenticate(self, key: str) -> Principal | None:
        entry = self._by_hash.get(hash_key(key))
        if entry is None:
            return None
        return Principal(tenant=entry.tenant, key_id=entry.key_id)


class StreamTokens:
    """HMAC-signed tokens naming one stream, one tenant and an expiry (`scope.tenant.exp.sig`)."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self._ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, scope: str, tenant: str) -> str:
        """A token for `scope` (e.g. `job:<id>`), valid for the configured time."""
        payload = f"{scope}.{tenant}.{int(time.time()) + self._ttl_s}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, scope: str) -> Principal | None:
        """The tenant the token was issued to, if it is genuine, unexpired and for `scope`."""
        payload, _, signature = token.rpartition(".")
        token_scope, _, rest = payload.partition(".")
        tenant, _, expiry = rest.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        if token_scope != scope or not expiry.isdigit() or int(expiry) < time.time():
            return None
        return Principal(tenant=tenant, key_id="stream-token")
