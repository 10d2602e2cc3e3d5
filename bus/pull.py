"""Pulling jobs one at a time from the `workers` consumer, each pull answered in the read loop.

nats-py's `PullSubscription.fetch(1)` spent per job a JSON dump, a task named by a fresh
uuid4 around `wait_for` of a queue get, and the message's pass through that queue: as much
Python as the pull itself. Here each pull request gets its own reply subject, and whatever
answers it is handed over in the read loop (`Connection.subscribe_direct`).

JetStream delivers a job with its own subject (`crucible.jobs.<tenant>`), not the pull's
reply subject; only the server's status answers (408: the pull expired) name the pull. Jobs
are matched to pulls in order, as the server serves its waiting pulls in the order they
came. A job that arrives when no pull waits for it (one given up on as the connection
dropped) is kept for the next pull, as nats-py does.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import api

from bus.connection import Connection
from bus.errors import BusUnavailableError

# Statuses that end a pull without a job and without an error: 408 its expiry, 404 nothing
# to give a pull that does not wait, 409 a pull cut short (a leader changed, max waiting...).
_NO_JOB = frozenset({"404", "408", "409"})
# The server ends a pull at its expiry; the client gives up this much later (the answer was
# lost with a connection).
_MARGIN_S = 1.0


@dataclass(slots=True)
class _Pull:
    token: int
    future: asyncio.Future[Msg | None]


class Puller:
    """One consumer's jobs, pulled one at a time; `start()` before use, `close()` after."""

    def __init__(self, nc: Connection, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next_subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count()
        self._pulls: deque[_Pull] = deque()  # in the order they were sent
        self._early: deque[Msg] = deque()  # jobs that came when no pull waited
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        """Listen for jobs and the server's answers."""
        try:
            self._subscription = await self._nc.subscribe_direct(
                f"{self._prefix}.*", self._on_message
            )
        except NatsError as exc:
            raise BusUnavailableError(f"could not listen on {self._prefix}: {exc!r}") from exc

    async def close(self) -> None:
        """Stop listening; a pull still waiting ends without a job, and a job kept for the
        next pull goes back to the queue at once (not after its ack wait)."""
        for pull in self._pulls:
            if not pull.future.done():
                pull.future.set_result(None)
        if self._subscription is not None and not self._nc.is_closed:
            await self._nc.unsubscribe_direct(self._subscription)
        while self._early:
            job = self._early.popleft()
            with suppress(NatsError):
                await job.nak()

    async def next(self, wait_s: float) -> Msg | None:
        """The next job, waiting up to `wait_s` for one to be queued; None if none was."""
        if self._early:
            return self._early.popleft()
        pull = _Pull(next(self._tokens), asyncio.get_running_loop().create_future())
        self._pulls.append(pull)
        request = b'{"batch":1,"expires":%d}' % int(wait_s * 1e9)
        try:
            await self._nc.publish(
                self._next_subject, request, reply=f"{self._prefix}.{pull.token}"
            )
            async with asyncio.timeout(wait_s + _MARGIN_S):
                return await pull.future
        except TimeoutError:
            return None
        except NatsError as exc:
            raise BusUnavailableError(f"could not pull a job: {exc!r}") from exc
        finally:
            if pull in self._pulls:
                self._pulls.remove(pull)

    def _on_message(
        self, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> None:
        status = headers.get(api.Header.STATUS) if headers else None
        if status is None:
            job = Msg(
                _client=self._nc,
                subject=subject.decode(),
                reply=reply.decode(),
                data=data,
                headers=headers,
            )
            while self._pulls:
                pull = self._pulls.popleft()
                if not pull.future.done():
                    pull.future.set_result(job)
                    return
            self._early.append(job)
            return
        if status == "100":  # a heartbeat (never asked for); not an answer
            return
        try:
            token = int(subject[len(self._prefix) + 1 :])
        except ValueError:
            return
        for pull in self._pulls:
            if pull.token == token:
                self._pulls.remove(pull)
                if pull.future.done():
                    return
                if status in _NO_JOB:
                    pull.future.set_result(None)
                else:
                    description = headers.get(api.Header.DESCRIPTION, "") if headers else ""
                    pull.future.set_exception(
                        BusUnavailableError(f"pulling a job failed: {status} {description}")
                    )
                return
