"""The gateway's API keys file: tenants' keys, stored hashed, edited while the gateway runs.

The gateway re-reads the file when it changes, so adding, rotating (add a new key, move the
clients over, revoke the old one) and revoking need no restart. Writes are atomic: a gateway
never reads half a file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gateway.auth import ApiKeyEntry, ApiKeysFile, hash_key

LOCAL_TENANT = "local"
LOCAL_KEY_ID = "local"
KEYS_FILE = "api-keys.json"
_KEY_BYTES = 32


def read_keys(path: Path) -> ApiKeysFile:
    if not path.exists():
        return ApiKeysFile(keys=[])
    return ApiKeysFile.model_validate_json(path.read_text())


def write_keys(path: Path, keys: ApiKeysFile) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keys.model_dump_json(indent=2))
    tmp.replace(path)


def add_key(path: Path, tenant: str, key_id: str | None = None, key: str | None = None) -> str:
    """Store a key for `tenant` (a new random one unless given) and return it, to show once.

    An existing `key_id` is replaced: that is how `crucible up` renews its local key.
    """
    key = key or secrets.token_urlsafe(_KEY_BYTES)
    entry = ApiKeyEntry(
        key_id=key_id or f"{tenant}-{secrets.token_hex(4)}", tenant=tenant, sha256=hash_key(key)
    )
    keys = read_keys(path)
    keys.keys = [other for other in keys.keys if other.key_id != entry.key_id] + [entry]
    write_keys(path, keys)
    return key


def revoke_key(path: Path, key_id: str) -> ApiKeyEntry | None:
    """Remove the key `key_id`; the entry removed, or None when there was none."""
    keys = read_keys(path)
    kept = [entry for entry in keys.keys if entry.key_id != key_id]
    if len(kept) == len(keys.keys):
        return None
    removed = next(entry for entry in keys.keys if entry.key_id == key_id)
    write_keys(path, ApiKeysFile(keys=kept))
    return removed


def write_local_api_key(state_dir: Path, api_key: str) -> Path:
    """Store the key `crucible up` prints, for tenant `local`, beside any other tenants' keys."""
    path = state_dir / KEYS_FILE
    add_key(path, LOCAL_TENANT, LOCAL_KEY_ID, api_key)
    return path
