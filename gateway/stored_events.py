"""What a stream holds on one subject, read with batched direct gets: no consumer.

A job's SSE stream used to replay its stored events through an ordered consumer made for the
request and deleted after it: two JetStream API calls, a consumer's state on the server, and
a subscription, per stream opened. A direct get asks for up to `BATCH_MESSAGES` messages of
one subject from a position on, in one request; the server answers each from its subject
index, then with an end-of-batch status that says how many are left. Replies come to one
subscription of the gateway's (under its own inbox prefix), told apart by a token.

In a replicated stream, any replica answers a direct get, a follower that has not applied the
newest messages yet too (and nothing in its answer says how far it had got): a read that ends
short of where it was asked to end could have missed messages that its reader was promised.
There, once the direct gets have nothing more, the stream's leader (`STREAM.MSG.GET`, the read
NATS keeps coherent with writes) is asked for the subject's next message after the last one
read: none (or one past the end) confirms the read, one before the end was missed, and the
read goes on from it. A read that a replica answered with a message past its end needs no
confirmation (a replica applies messages in order); nor does any read of a single-replica
stream, whose only server is its leader.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from bus import BusUnavailableError
from bus import subjects as s

# Messages per request: a print(1) job has three events, a chatty one a few hundred; the
# server also stops a batch at its own byte limit, and the reader asks again for the rest.
BATCH_MESSAGES = 256
# Between two messages of one answer; the server sends them back to back, so only an
# outage gets near it.
_NEXT_MESSAGE_TIMEOUT_S = 10.0

STORED_READS = Counter(
    "crucible_sse_stored_reads",
    "Direct gets of stored events (a replay, or a job's live tail catching up to the feed).",
)
LEADER_READS = Counter(
    "crucible_sse_leader_reads",
    "Reads of a stored event from a replicated stream's leader after direct gets had nothing "
    "more: 'confirmed' (nothing was missed), 'behind' (the replica that answered had not "
    "applied it yet: the leader's message was read on).",
    ["outcome"],
)

# The headers a direct get answer carries (nats-server's names).
_STATUS = "Status"
_SEQUENCE = "Nats-Sequence"
_NUM_PENDING = "Nats-Num-Pending"
_END_OF_BATCH = "204"
_NOT_FOUND = "404"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message of a stream, at its position (the stream sequence)."""

    seq: int
    data: bytes
    headers: dict[str, str] | None


class DirectReader:
    """Batched direct gets from one stream, all answered on one subscription; in a replicated
    stream, confirmed by its leader."""

    def __init__(self, nc: NATS, js: JetStreamContext, stream: str, replicated: bool) -> None:
        self._nc = nc
        self._js = js
        self._api = s.direct_get_subject(stream)
        self._stream = stream
        self.replicated = replicated
        self._prefix = nc.new_inbox()  # under the gateway's own inbox prefix
        self._tokens = itertools.count()
        self._answers: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Subscribe to the answers (once, for every read to come)."""
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)

    async def _route(self, msg: Msg) -> None:
        answers = self._answers.get(msg.subject.rpartition(".")[2])
        if answers is not None:  # else the reader stopped before its batch's end
            answers.put_nowait(msg)

    async def read(
        self, subject: str, start_seq: int, end_seq: int | None = None
    ) -> AsyncGenerator[StoredMessage]:
        """The messages stored on `subject` from position `start_seq` on (up to `end_seq`
        when given, else up to the newest), in order, none missed: `end_seq` must be a
        position the stream has stored (so the leader has it)."""
        next_seq = max(start_seq, 1)
        while end_seq is None or next_seq <= end_seq:
            STORED_READS.inc()
            token = str(next(self._tokens))
            answers: asyncio.Queue[Msg] = asyncio.Queue()
            self._answers[token] = answers
            ended = False  # this replica has nothing more on the subject
            try:
                request = {"seq": next_seq, "next_by_subj": subject, "batch": BATCH_MESSAGES}
                await self._nc.publish(
                    self._api, json.dumps(request).encode(), reply=f"{self._prefix}.{token}"
                )
                while not ended:
                    msg = await self._next(answers, subject)
                    headers = msg.headers or {}
                    status = headers.get(_STATUS)
                    if status is None:
                        seq = int(headers[_SEQUENCE])
                        if end_seq is not None and seq > end_seq:
                            return  # the replica holds every message up to `end_seq`
                        yield StoredMessage(seq, msg.data, msg.headers)
                        next_seq = seq + 1
                    elif status == _END_OF_BATCH:
                        if int(headers.get(_NUM_PENDING, "0")) > 0:
                            break  # the server's byte limit cut the batch: ask for the rest
                        ended = True
                    elif status == _NOT_FOUND:
                        ended = True
                    else:
                        raise BusUnavailableError(
                            f"reading {subject} from {self._stream} failed: {status} "
                            f"{headers.get('Description', '')}"
                        )
            finally:
                del self._answers[token]
            if ended:
                if not self.replicated:
                    return
                missed = await self._leader_next(subject, next_seq)
                if missed is None or (end_seq is not None and missed.seq > end_seq):
                    LEADER_READS.labels("confirmed").inc()
                    return
                LEADER_READS.labels("behind").inc()  # the replica had not applied it yet
                yield missed
                next_seq = missed.seq + 1

    async def _leader_next(self, subject: str, start_seq: int) -> StoredMessage | None:
        """The first message on `subject` from `start_seq` on, as the stream's leader has it."""
        try:
            raw = await self._js.get_msg(self._stream, seq=start_seq, subject=subject, next=True)
        except NotFoundError:
            return None
        except Exception as exc:  # nats-py raises several unrelated types
            raise BusUnavailableError(
                f"reading {subject} from the leader of {self._stream} failed: {exc!r}"
            ) from exc
        assert raw.seq is not None
        return StoredMessage(raw.seq, raw.data or b"", raw.headers)

    async def _next(self, answers: asyncio.Queue[Msg], subject: str) -> Msg:
        try:
            async with asyncio.timeout(_NEXT_MESSAGE_TIMEOUT_S):
                return await answers.get()
        except TimeoutError as exc:
            raise BusUnavailableError(f"reading {subject} from {self._stream} stalled") from exc

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
