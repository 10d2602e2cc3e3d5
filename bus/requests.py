"""JetStream requests on a job's path (conditional stores, direct gets), each answered on a
subject of its own under one subscription.

nats-py's `js.publish` and `get_last_msg` spent ~80 us of the worker's Python per round trip,
where the round trip itself (a flush's PING and PONG) costs ~35: a NUID token, a future
passed through an asyncio queue and a subscription task, `wait_for`'s timer task, and an ack
parsed into a `PubAck` dataclass by reflection. Here a request's reply subject ends in a
counter, its reply is handed to its waiter in the read loop (`Connection.subscribe_direct`),
one task fails the requests left unanswered once a second instead of a timer per request,
and an ack is parsed with orjson, for its sequence only.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import APIError

from bus.connection import Connection
from bus.errors import (
    BusUnavailableError,
    QueueFullError,
    SupersededError,
    is_queue_full,
    is_superseded,
)

REQUEST_TIMEOUT_S = 5.0
# How often unanswered requests are looked at: one times out between its timeout and that
# plus this.
_SWEEP_S = 1.0
_NOT_FOUND = "404"
_SEQUENCE_HEADER = "Nats-Sequence"  # a direct get's answer: the message's stream sequence


@dataclass(frozen=True, slots=True)
class Stored:
    """JetStream's ack of a store."""

    seq: int  # the message's stream sequence
    duplicate: bool  # its `Nats-Msg-Id` was stored already; nothing new was stored


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as a direct get returns it: its stream sequence, body and own headers."""

    seq: int
    data: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Reply:
    data: bytes
    headers: dict[str, str] | None


@dataclass(slots=True)
class _Waiting:
    future: asyncio.Future[_Reply]
    deadline: float  # loop time


def _refusal(reply: _Reply) -> APIError | None:
    """Why JetStream refused a store or a get, from its answer; None when it did not."""
    status = (reply.headers or {}).get(api.Header.STATUS)
    if status is not None:  # 503: no stream listens on the subject; 408, ...
        description = (reply.headers or {}).get(api.Header.DESCRIPTION) or "no responders"
        return APIError(code=int(status), description=description)
    # An ack is `{"stream":...,"seq":...}`; only a refusal has "error".
    if b'"error"' not in reply.data:
        return None
    try:
        error = orjson.loads(reply.data)["error"]
        return APIError(
            code=error.get("code"),
            err_code=error.get("err_code"),
            description=error.get("description"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return APIError(description=f"unreadable answer {reply.data[:200]!r}")


class JetStreamRequests:
    """Stores and direct gets on one connection; `start()` before use, `close()` after."""

    def __init__(self, nc: Connection, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count()
        self._waiting: dict[int, _Waiting] = {}
        self._subscription: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen for the answers."""
        try:
            self._subscription = await self._nc.subscribe_direct(
                f"{self._prefix}.*", self._on_reply
            )
        except NatsError as exc:
            raise BusUnavailableError(f"could not listen on {self._prefix}: {exc!r}") from exc
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        """Stop listening; requests still waiting fail with BusUnavailableError."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(BusUnavailableError("the requests were closed"))
        if self._subscription is not None and not self._nc.is_closed:
            await self._nc.unsubscribe_direct(self._subscription)

    async def store(self, subject: str, payload: bytes, headers: dict[str, str]) -> Stored:
        """Store a message. A stale `Nats-Expected-Last-Subject-Sequence` raises
        SupersededError; a full queue QueueFullError; anything else BusUnavailableError."""
        reply = await self._request(subject, payload, headers)
        refusal = _refusal(reply)
        if refusal is not None:
            if is_superseded(refusal):
                expected = headers.get("Nats-Expected-Last-Subject-Sequence")
                raise SupersededError(f"{subject} moved past sequence {expected}") from refusal
            if is_queue_full(refusal):
                raise QueueFullError(f"{subject}: {refusal.description}") from refusal
            raise BusUnavailableError(f"could not store on {subject}: {refusal}") from refusal
        try:
            ack = orjson.loads(reply.data)
            return Stored(seq=int(ack["seq"]), duplicate=bool(ack.get("duplicate", False)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BusUnavailableError(f"unreadable ack on {subject}: {reply.data!r}") from exc

    async def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        """The newest message on `subject` (a direct get), or None when it has none."""
        reply = await self._request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", None)
        headers = reply.headers or {}
        if headers.get(api.Header.STATUS) == _NOT_FOUND:
            return None
        refusal = _refusal(reply)
        if refusal is not None:
            raise BusUnavailableError(f"could not read {subject} in {stream}: {refusal}")
        if _SEQUENCE_HEADER not in headers:
            raise BusUnavailableError(f"{subject} in {stream}: an answer without a sequence")
        return StoredMessage(seq=int(headers[_SEQUENCE_HEADER]), data=reply.data, headers=headers)

    async def _request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> _Reply:
        token = next(self._tokens)
        future = asyncio.get_running_loop().create_future()
        waiting = _Waiting(future, asyncio.get_running_loop().time() + self._timeout_s)
        self._waiting[token] = waiting
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
            return await future
        except (NatsError, TimeoutError) as exc:
            raise BusUnavailableError(f"no answer on {subject}: {exc!r}") from exc
        finally:
            del self._waiting[token]

    def _on_reply(
        self, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> None:
        try:
            token = int(subject[len(self._prefix) + 1 :])
        except ValueError:
            return
        waiting = self._waiting.get(token)
        if waiting is not None and not waiting.future.done():
            waiting.future.set_result(_Reply(data, headers))

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_SWEEP_S)
            now = loop.time()
            for waiting in self._waiting.values():
                if waiting.deadline <= now and not waiting.future.done():
                    waiting.future.set_exception(TimeoutError())
