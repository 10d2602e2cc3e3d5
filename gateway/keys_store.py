"""The API keys file, re-read when it changes, so keys can be added or revoked live."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from gateway.auth import ApiKeys, Principal


class ApiKeysStore:
    """Holds the current keys; one `stat` per lookup notices an edited or replaced file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._version: tuple[int, int, int] | None = None
        self._keys = ApiKeys([])

    def load(self) -> None:
        """(Re)read the file when it changed; raises when it is missing or malformed."""
        info = self._path.stat()
        # Editors and `crucible keys` replace the file: a new inode, even within one mtime tick.
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        if version != self._version:
            self._keys = ApiKeys.load(self._path)
            self._version = version

    def authenticate(self, key: str) -> Principal | None:
        # A file being rewritten or briefly missing: keep serving the keys we had.
        with suppress(OSError, ValueError):
            self.load()
        return self._keys.authenticate(key)
