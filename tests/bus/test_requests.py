"""Stores and direct gets answered in the read loop, on a real nats-server: what JetStream's
answers mean, a request nobody answers, and the answers' subscription across a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bus import BusUnavailableError, JetStreamRequests, SupersededError
from bus import subjects as s
from tests.stack import NatsServer
from tests.workers.bus_helpers import connected, ensure_layout

SUBJECT = s.events_subject("r-1", "j-1")


@pytest.fixture
async def requests(nats_server: NatsServer) -> AsyncIterator[JetStreamRequests]:
    await ensure_layout(nats_server)
    async with connected(nats_server, "worker") as nc:
        requests = JetStreamRequests(nc, timeout_s=0.2)
        await requests.start()
        yield requests
        await requests.close()


async def test_a_store_answers_its_sequence_and_a_repeat_is_a_duplicate(
    requests: JetStreamRequests,
) -> None:
    first = await requests.store(SUBJECT, b"{}", {"Nats-Msg-Id": "j-1.1.1"})
    second = await requests.store(SUBJECT, b"{}", {"Nats-Msg-Id": "j-1.1.2"})
    again = await requests.store(SUBJECT, b"{}", {"Nats-Msg-Id": "j-1.1.1"})
    assert (first.duplicate, second.duplicate, again.duplicate) == (False, False, True)
    assert second.seq > first.seq and again.seq == first.seq


async def test_a_store_after_another_than_the_newest_is_superseded(
    requests: JetStreamRequests,
) -> None:
    expected = {"Nats-Expected-Last-Subject-Sequence": "0"}
    stored = await requests.store(SUBJECT, b"1", {**expected, "Nats-Msg-Id": "a"})
    with pytest.raises(SupersededError):
        await requests.store(SUBJECT, b"2", {**expected, "Nats-Msg-Id": "b"})
    last = await requests.last_message(s.EVENTS_STREAM, SUBJECT)
    assert last is not None and (last.seq, last.data) == (stored.seq, b"1")


async def test_the_newest_message_of_a_subject_or_none(requests: JetStreamRequests) -> None:
    assert await requests.last_message(s.EVENTS_STREAM, SUBJECT) is None
    await requests.store(SUBJECT, b"old", {"Nats-Msg-Id": "a"})
    newest = await requests.store(SUBJECT, b"new", {"Nats-Msg-Id": "b", s.EVENT_TYPE_HEADER: "x"})
    last = await requests.last_message(s.EVENTS_STREAM, SUBJECT)
    assert last is not None
    assert (last.seq, last.data, last.headers[s.EVENT_TYPE_HEADER]) == (newest.seq, b"new", "x")


async def test_a_store_no_stream_takes_is_unavailable(requests: JetStreamRequests) -> None:
    # A worker may publish heartbeats, which no stream keeps: nats-server says no responders.
    with pytest.raises(BusUnavailableError, match="503"):
        await requests.store(s.worker_subject("w"), b"{}", {})


async def test_a_request_nobody_answers_times_out_as_unavailable(
    requests: JetStreamRequests, nats_server: NatsServer
) -> None:
    async with connected(nats_server, "debug") as listener:
        await listener.subscribe(s.WORKERS_ALL)  # hears it, never answers
        await listener.flush()
        with pytest.raises(BusUnavailableError, match="TimeoutError"):
            await requests.store(s.worker_subject("w"), b"{}", {})


async def test_requests_waiting_when_closed_fail_as_unavailable(nats_server: NatsServer) -> None:
    await ensure_layout(nats_server)
    async with connected(nats_server, "worker") as nc, connected(nats_server, "debug") as listener:
        await listener.subscribe(s.WORKERS_ALL)
        await listener.flush()
        requests = JetStreamRequests(nc)
        await requests.start()
        waiting = asyncio.create_task(requests.store(s.worker_subject("w"), b"{}", {}))
        await asyncio.sleep(0.1)
        await requests.close()
        with pytest.raises(BusUnavailableError, match="closed"):
            await waiting


async def test_answers_still_come_after_the_server_restarts(
    requests: JetStreamRequests, nats_server: NatsServer
) -> None:
    await requests.store(SUBJECT, b"before", {"Nats-Msg-Id": "a"})
    nats_server.restart()
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the client reconnects on its own, and subscribes its inbox again
        try:
            stored = await requests.store(SUBJECT, b"after", {"Nats-Msg-Id": "b"})
            break
        except BusUnavailableError:
            assert asyncio.get_running_loop().time() < deadline, "no answer after the restart"
            await asyncio.sleep(0.1)
    last = await requests.last_message(s.EVENTS_STREAM, SUBJECT)
    assert last is not None and (last.seq, last.data) == (stored.seq, b"after")
