"""Collects the permission violations a NATS client is told about through its error callback."""

from __future__ import annotations

import asyncio


class Violations:
    def __init__(self) -> None:
        self.errors: list[str] = []

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    async def wait_for(self, fragment: str) -> None:
        for _ in range(100):
            # nats-py lower-cases the subject in its error text.
            if any(fragment.lower() in error.lower() for error in self.errors):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no violation mentioning {fragment!r}; saw {self.errors}")
