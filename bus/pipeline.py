"""Many JetStream publishes in flight at once, each deduplicated by its `Nats-Msg-Id`.

One request/reply per message would make a 10,000-job run cost 10,000 round trips; here a
window of publishes goes out back to back and their acks are gathered together. A publish
that failed is sent again with the same id, which JetStream drops if the first did land.

The acks come to one subscription per call, each on a reply subject that ends in its
message's position, and a reply is parsed only when it is an error. nats-py's
`publish_async` spent, per message, a future and its callback, a semaphore turn, a random
token, a JSON parse and a `PubAck`: more than the publish itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import APIError, NoStreamResponseError

from bus.errors import BusUnavailableError, QueueFullError, is_queue_full

_WINDOW = 1000  # publishes whose acks are awaited together before the next window goes out
_ACK_TIMEOUT_S = 10.0
_ATTEMPTS = 3


@dataclass(frozen=True)
class Outgoing:
    """One message to store: its subject, JSON body, and dedup id."""

    subject: str
    payload: bytes
    msg_id: str
    headers: dict[str, str] = field(default_factory=dict)


def _refusal(msg: Msg) -> Exception | None:
    """Why JetStream did not store a message, from its reply; None when it did."""
    if msg.headers and api.Header.STATUS in msg.headers:  # no stream listens (503), ...
        return NoStreamResponseError()
    # A stored message's ack is `{"stream":...,"seq":...}`; only a refusal has "error".
    if msg.data and b'"error"' not in msg.data:
        return None
    try:
        error = orjson.loads(msg.data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return APIError(description=f"unreadable ack {msg.data[:200]!r}")
    if not isinstance(error, dict):
        return None
    return APIError(
        code=error.get("code"), err_code=error.get("err_code"), description=error.get("description")
    )


class _Acks:
    """The replies to one call's publishes, by the position of the message each answers."""

    def __init__(self, inbox: str) -> None:
        self._prefix = len(inbox) + 1
        self.stored: set[int] = set()
        self.refused: dict[int, Exception] = {}
        self._unanswered: set[int] = set()
        self.answered = asyncio.Event()

    def expect(self, positions: Iterable[int]) -> None:
        """Wait for these positions' replies next (sent again, they may be refused anew)."""
        self._unanswered = set(positions)
        for position in self._unanswered:
            self.refused.pop(position, None)
        self.answered.clear()

    async def on_reply(self, msg: Msg) -> None:
        position = int(msg.subject[self._prefix :])
        refusal = _refusal(msg)
        if refusal is None:
            self.stored.add(position)
            self.refused.pop(position, None)
        elif position not in self.stored:  # a late refusal of a message since stored
            self.refused[position] = refusal
        self._unanswered.discard(position)
        if not self._unanswered:
            self.answered.set()


async def _publish_window(
    nc: NATS, inbox: str, acks: _Acks, window: dict[int, Outgoing]
) -> dict[int, Outgoing]:
    """Publish a window (messages by position); return those that were not stored."""
    acks.expect(window)
    message: Outgoing | None = None
    try:
        # nats-py only buffers each publish; the whole window goes out in one write when
        # this coroutine next yields, and a connection stuck reconnecting ends it here.
        async with asyncio.timeout(_ACK_TIMEOUT_S):
            for position, message in window.items():
                headers = {**message.headers, "Nats-Msg-Id": message.msg_id}
                await nc.publish(
                    message.subject, message.payload, reply=f"{inbox}.{position}", headers=headers
                )
    except (TimeoutError, NatsError) as exc:
        subject = message.subject if message else "?"
        raise BusUnavailableError(f"could not publish on {subject}: {exc!r}") from exc
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_ACK_TIMEOUT_S):
            await acks.answered.wait()
    for position, refusal in acks.refused.items():
        if position in window and is_queue_full(refusal):
            # Sending it again cannot help: the tenant's queue is at its cap.
            raise QueueFullError(f"the queue on {window[position].subject} is full")
    return {p: m for p, m in window.items() if p not in acks.stored}


async def publish_all(nc: NATS, messages: Sequence[Outgoing]) -> None:
    """Store every message, or raise BusUnavailableError naming how many could not be."""
    inbox = nc.new_inbox()
    acks = _Acks(inbox)
    try:
        subscription = await nc.subscribe(f"{inbox}.*", cb=acks.on_reply)
    except NatsError as exc:
        raise BusUnavailableError(f"could not listen for acks on {inbox}: {exc!r}") from exc
    try:
        for start in range(0, len(messages), _WINDOW):
            stop = min(start + _WINDOW, len(messages))
            remaining = {p: messages[p] for p in range(start, stop)}
            for _ in range(_ATTEMPTS):
                remaining = await _publish_window(nc, inbox, acks, remaining)
                if not remaining:
                    break
            if remaining:
                first = next(iter(remaining.values()))
                raise BusUnavailableError(
                    f"{len(remaining)} messages (e.g. on {first.subject}) were not stored"
                )
    finally:
        with contextlib.suppress(NatsError):
            await subscription.unsubscribe()


def kv_purge(subject: str, msg_id: str) -> Outgoing:
    """A KV purge of one key, as nats-py's `KeyValue.purge` sends it, for batching."""
    return Outgoing(
        subject=subject,
        payload=b"",
        msg_id=msg_id,
        headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"},
    )
