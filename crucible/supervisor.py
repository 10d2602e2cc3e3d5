"""Keeps a set of child processes running: restarts the ones that die, stops all in order."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

log = logging.getLogger(__name__)

_MIN_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 10.0
# A child that ran this long before dying is restarted at once; quicker deaths back off.
_HEALTHY_RUN_S = 10.0


@dataclass
class Child:
    """One supervised program."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    stop_timeout_s: float = 10.0
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff_s: float = _MIN_BACKOFF_S
    restarts: int = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=dict(self.env),
            stdin=asyncio.subprocess.DEVNULL,
            # Its own session: a Ctrl-C reaches only the supervisor, which stops the children
            # in order (workers first, NATS last) instead of all at once.
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.stop_timeout_s):
                await process.wait()
        except TimeoutError:
            log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout_s)
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class Supervisor:
    """Runs children in groups; `stop()` stops groups in reverse order of start."""

    def __init__(self) -> None:
        self._groups: list[list[Child]] = []
        self._stopping = asyncio.Event()

    async def start_group(self, children: list[Child]) -> None:
        for child in children:
            await child.start()
        self._groups.append(children)

    def request_stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def watch(self) -> None:
        """Restart children that exit until a stop is requested."""
        watchers = [
            asyncio.create_task(self._watch_child(child))
            for group in self._groups
            for child in group
        ]
        await self._stopping.wait()
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    async def _watch_child(self, child: Child) -> None:
        while not self._stopping.is_set():
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping.is_set():
                return
            ran_s = time.monotonic() - child.started_at
            child.backoff_s = (
                _MIN_BACKOFF_S
                if ran_s >= _HEALTHY_RUN_S
                else min(child.backoff_s * 2, _MAX_BACKOFF_S)
            )
            child.restarts += 1
            log.warning(
                "%s exited with %s after %.1f s; restarting in %.1f s",
                child.name,
                code,
                ran_s,
                child.backoff_s,
            )
            await asyncio.sleep(child.backoff_s)
            if not self._stopping.is_set():
                await child.start()

    async def stop(self) -> None:
        """Stop every group, last started first; each group's children together."""
        self._stopping.set()
        for group in reversed(self._groups):
            await asyncio.gather(*(child.stop() for child in group))
