"""The API keys file, re-read when it changes, so keys can be added or revoked live."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from gateway.auth import ApiKeys, Principal


class ApiKeysStore:
    """Holds the current keys; one `stat` per lookup notices an edited file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns = -1
        self._keys = ApiKeys([])

    def load(self) -> None:
        """(Re)read the file when it changed; raises when it is missing or malformed."""
        mtime_ns = self._path.stat().st_mtime_ns
        if mtime_ns != self._mtime_ns:
            self._keys = ApiKeys.load(self._path)
            self._mtime_ns = mtime_ns

    def authenticate(self, key: str) -> Principal | None:
        # A file being rewritten or briefly missing: keep serving the keys we had.
        with suppress(OSError, ValueError):
            self.load()
        return self._keys.authenticate(key)
