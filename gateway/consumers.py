"""Reading a stream through short-lived ordered consumers: a snapshot of the newest message
per subject, a replay up to what the stream holds now, or a live tail. The gateway may create
these on EVENTS and on the runs bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from bus import BusUnavailableError

# A snapshot waits this long for each next message before calling the server gone; the
# server sends them back to back, so only an outage gets near it.
_NEXT_MESSAGE_TIMEOUT_S = 10.0
# nats-py re-creates an ordered consumer that has been silent (no message, no heartbeat)
# for two of these: that is how a tail gets over the NATS node it was on being lost. At 5 s,
# a run's progress stood still 10-20 s after each node loss in a chaos eval; at 2 s the
# servers send each idle tail a heartbeat every 2 s, a few bytes.
_IDLE_HEARTBEAT_S = 2.0

_removals: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references to tasks


def _ordered_config(
    subject: str, deliver: api.DeliverPolicy, headers_only: bool, start_seq: int | None, inbox: str
) -> api.ConsumerConfig:
    # What nats-py's `subscribe(ordered_consumer=True)` sets; created here by hand because
    # its answer (the consumer info, with the pending count) is what tells a snapshot's end.
    return api.ConsumerConfig(
        deliver_policy=deliver,
        opt_start_seq=start_seq,
        filter_subject=subject,
        headers_only=headers_only or None,
        deliver_subject=inbox,
        ack_policy=api.AckPolicy.NONE,
        max_deliver=1,
        flow_control=True,
        idle_heartbeat=_IDLE_HEARTBEAT_S,
        num_replicas=1,
        mem_storage=True,
        inactive_threshold=60.0,  # the server removes it if we vanish without deleting it
    )


@asynccontextmanager
async def _ordered(
    js: JetStreamContext,
    stream: str,
    config: api.ConsumerConfig,
) -> AsyncIterator[tuple[int, JetStreamContext.PushSubscription]]:
    creating = asyncio.ensure_future(_create(js, stream, config))
    try:
        info, sub = await asyncio.shield(creating)
    except asyncio.CancelledError:
        # The reader left (an SSE client gone) while the consumer was being made: it is
        # removed once made, instead of lingering until the server's inactivity timeout.
        _in_background(_remove_when_made(js, stream, creating))
        raise
    try:
        yield info.num_pending or 0, sub
    finally:
        # In a task of its own: the reader may be an SSE client's task being cancelled (it
        # left), where each await here would be cancelled again before the consumer is gone.
        await asyncio.shield(_in_background(_remove(js, stream, info.name, sub)))


Made = tuple[api.ConsumerInfo, JetStreamContext.PushSubscription]


async def _create(js: JetStreamContext, stream: str, config: api.ConsumerConfig) -> Made:
    try:
        info = await js.add_consumer(stream, config)
    except Exception as exc:  # nats-py raises several unrelated types here
        raise BusUnavailableError(f"cannot read {config.filter_subject}: {exc!r}") from exc
    try:
        sub = await js.subscribe_bind(
            stream=stream, config=config, consumer=info.name, ordered_consumer=True
        )
    except Exception as exc:
        with suppress(Exception):
            await js.delete_consumer(stream, info.name)
        raise BusUnavailableError(f"cannot read {config.filter_subject}: {exc!r}") from exc
    jsi = sub._sub._jsi  # the ordered consumer's state, on the plain subscription inside
    if config.opt_start_seq is not None and jsi is not None:
        # nats-py re-creates an ordered consumer from the stream position after the last one
        # it delivered, which it starts at 0: a reset before the first message (heartbeats
        # missed while NATS was away) would re-read the whole stream from position 1 (for the
        # gateway's event feed, every event the stream holds). Start it where ours starts.
        jsi._sseq = config.opt_start_seq - 1
    return info, sub


def _in_background(removal: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.create_task(removal)
    _removals.add(task)
    task.add_done_callback(_removals.discard)
    return task


async def _remove_when_made(
    js: JetStreamContext, stream: str, creating: asyncio.Future[Made]
) -> None:
    try:
        info, sub = await creating
    except Exception:
        return  # never made: nothing to remove
    await _remove(js, stream, info.name, sub)


async def _remove(
    js: JetStreamContext, stream: str, consumer: str, sub: JetStreamContext.PushSubscription
) -> None:
    with suppress(Exception):
        await sub.unsubscribe()
    # Now, not after the inactivity timeout: a busy gateway makes many of these, and each
    # one costs the servers (in a cluster, the meta leader) until it is gone.
    with suppress(Exception):
        await js.delete_consumer(stream, consumer)


async def last_per_subject(
    js: JetStreamContext, inbox: str, stream: str, subject: str, headers_only: bool
) -> list[Msg]:
    """The newest message of every subject matching `subject`, oldest first."""
    config = _ordered_config(subject, api.DeliverPolicy.LAST_PER_SUBJECT, headers_only, None, inbox)
    messages: list[Msg] = []
    async with _ordered(js, stream, config) as (pending, sub):
        if pending == 0:
            return messages
        while True:
            try:
                msg = await sub.next_msg(timeout=_NEXT_MESSAGE_TIMEOUT_S)
            except TimeoutError as exc:
                raise BusUnavailableError(f"reading {subject} stalled") from exc
            messages.append(msg)
            if msg.metadata.num_pending == 0:
                return messages


@asynccontextmanager
async def tail(
    js: JetStreamContext,
    inbox: str,
    stream: str,
    subject: str,
    start_seq: int,
    headers_only: bool,
) -> AsyncIterator[AsyncIterator[Msg]]:
    """Every message on `subject` from stream position `start_seq` on, live, in order."""
    config = _ordered_config(
        subject, api.DeliverPolicy.BY_START_SEQUENCE, headers_only, max(start_seq, 1), inbox
    )
    async with _ordered(js, stream, config) as (_, sub):

        async def messages() -> AsyncIterator[Msg]:
            async for msg in sub.messages:
                yield msg

        yield messages()


@asynccontextmanager
async def replay(
    js: JetStreamContext,
    inbox: str,
    stream: str,
    subject: str,
    start_seq: int,
    headers_only: bool,
) -> AsyncIterator[AsyncIterator[Msg]]:
    """The messages on `subject` from stream position `start_seq` up to the newest one stored
    when the replay began (or a little later), in order; then the iterator ends."""
    config = _ordered_config(
        subject, api.DeliverPolicy.BY_START_SEQUENCE, headers_only, max(start_seq, 1), inbox
    )
    async with _ordered(js, stream, config) as (pending, sub):

        async def messages() -> AsyncIterator[Msg]:
            if pending == 0:
                return
            while True:
                try:
                    msg = await sub.next_msg(timeout=_NEXT_MESSAGE_TIMEOUT_S)
                except TimeoutError as exc:
                    raise BusUnavailableError(f"replaying {subject} stalled") from exc
                yield msg
                if msg.metadata.num_pending == 0:
                    return

        yield messages()
