"""The local API key of `crucible up`, stored hashed in the gateway's keys file."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.auth import ApiKeyEntry, ApiKeysFile, hash_key

LOCAL_TENANT = "local"


def write_local_api_key(state_dir: Path, api_key: str) -> Path:
    """Write `api-keys.json` holding only this key's hash, for tenant `local`."""
    path = state_dir / "api-keys.json"
    keys = ApiKeysFile(
        keys=[ApiKeyEntry(key_id="local", tenant=LOCAL_TENANT, sha256=hash_key(api_key))]
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keys.model_dump_json(indent=2))
    tmp.replace(path)  # atomic: a gateway watching the file never reads half of it
    return path
