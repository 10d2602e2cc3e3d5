"""Another tenant's API key, added to a running stack's keys file and revoked afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from crucible.api_keys import KEYS_FILE, add_key, revoke_key
from tests.stack import Stack


@contextmanager
def tenant_key(stack: Stack, tenant: str, key_id: str) -> Iterator[dict[str, str]]:
    """Headers carrying a fresh key of `tenant`; the gateway picks it up without a restart."""
    keys_file = stack.state_dir / KEYS_FILE
    key = add_key(keys_file, tenant, key_id)
    try:
        yield stack.headers(key)
    finally:
        revoke_key(keys_file, key_id)
