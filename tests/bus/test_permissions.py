"""Each service's NATS identity can do its job and nothing else (real nats-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client as NATS

from bus import StreamSettings, connect, ensure_streams
from bus import subjects as s
from bus.connection import ErrorCallback
from tests.bus.violations import Violations
from tests.stack import NatsServer

ConnectAs = Callable[..., Awaitable[NATS]]


@pytest.fixture
async def connect_as(nats_server: NatsServer) -> AsyncIterator[ConnectAs]:
    """Connects with a service's identity. Every client is closed at teardown, a failed test's
    too: one left open is collected later, in another test, which then fails on its warning."""
    clients: list[NATS] = []

    async def connecting(service: str, error_cb: ErrorCallback | None = None) -> NATS:
        clients.append(await connect(nats_server.settings(service), service, service, error_cb))
        return clients[-1]

    yield connecting
    for client in clients:
        await client.close()


async def test_worker_cannot_enqueue_a_job(nats_server: NatsServer, connect_as: ConnectAs) -> None:
    gateway = await connect_as("gateway")
    await ensure_streams(gateway.jetstream(), StreamSettings())
    violations = Violations()
    worker = await connect_as("worker", violations.on_error)
    with pytest.raises(Exception):  # noqa: B017 - a refused JS publish surfaces as a timeout
        await worker.jetstream().publish(s.job_subject("j-forged"), b"{}", timeout=1)
    await violations.wait_for(f'publish to "{s.job_subject("j-forged")}"')
    assert "Publish Violation" in nats_server.log()
    # Nothing reached the queue.
    info = await gateway.jetstream().stream_info(s.JOBS_STREAM)
    assert info.state.messages == 0


@pytest.mark.parametrize(
    ("service", "action", "subject"),
    [
        ("worker", "subscribe", s.JOBS_ALL),
        ("worker", "subscribe", s.inbox_prefix("gateway") + ".>"),
        ("worker", "publish", f"$KV.{s.JOBS_BUCKET}.j-1"),
        ("worker", "publish", f"$KV.{s.RUNS_BUCKET}.6c6f63616c.r-1"),
        ("worker", "publish", f"$JS.API.CONSUMER.CREATE.{s.RUNS_BUCKET_STREAM}"),
        ("worker", "publish", "$JS.API.STREAM.DELETE.JOBS"),
        ("worker", "publish", s.cancel_subject("j-1")),
        ("gateway", "publish", s.events_subject("r-1", "j-1")),
        ("gateway", "subscribe", s.inbox_prefix("worker") + ".>"),
        ("gateway", "publish", "$JS.API.STREAM.DELETE.EVENTS"),
        # It reads events from the stream's leader too, but no other stream's messages that way.
        ("gateway", "publish", f"$JS.API.STREAM.MSG.GET.{s.JOBS_STREAM}"),
        ("gateway", "publish", f"$JS.API.STREAM.MSG.GET.{s.AUDIT_STREAM}"),
        ("gateway", "publish", f"$JS.ACK.{s.JOBS_STREAM}.{s.WORKERS_CONSUMER}.1.1.1.1.1.0"),
        ("gateway", "subscribe", s.AUDIT_ALL),
        # The audit log is for operators: no worker reads it, live or stored.
        ("worker", "subscribe", s.AUDIT_ALL),
        ("worker", "publish", f"$JS.API.CONSUMER.CREATE.{s.AUDIT_STREAM}"),
        ("worker", "publish", s.audit_subject("local")),
        # debug reads everything and changes nothing.
        ("debug", "publish", s.job_subject("local")),
        ("debug", "publish", s.events_subject("r-1", "j-1")),
        ("debug", "publish", s.audit_subject("local")),
        ("debug", "publish", s.cancel_subject("j-1")),
        ("debug", "publish", s.worker_subject("w-1")),
        ("debug", "publish", f"$KV.{s.JOBS_BUCKET}.j-1"),
        ("debug", "publish", f"$JS.API.STREAM.DELETE.{s.AUDIT_STREAM}"),
        ("debug", "publish", f"$JS.API.STREAM.PURGE.{s.EVENTS_STREAM}"),
        ("debug", "publish", f"$JS.API.CONSUMER.DELETE.{s.EVENTS_STREAM}.c1"),
        ("debug", "publish", f"$JS.API.CONSUMER.CREATE.{s.JOBS_STREAM}"),
        ("debug", "publish", f"$JS.ACK.{s.JOBS_STREAM}.{s.WORKERS_CONSUMER}.1.1.1.1.1.0"),
    ],
)
async def test_forbidden_actions_are_refused(
    connect_as: ConnectAs, service: str, action: str, subject: str
) -> None:
    violations = Violations()
    client = await connect_as(service, violations.on_error)
    if action == "publish":
        await client.publish(subject, b"{}")
    else:
        await client.subscribe(subject)
    await client.flush()
    word = "publish" if action == "publish" else "subscription"
    await violations.wait_for(f'{word} to "{subject}"')


async def test_worker_can_fetch_ack_and_publish_events(connect_as: ConnectAs) -> None:
    gateway = await connect_as("gateway")
    gjs = gateway.jetstream()
    await ensure_streams(gjs, StreamSettings())
    await gjs.publish(s.job_subject("j-1"), b"{}")
    violations = Violations()
    worker = await connect_as("worker", violations.on_error)
    wjs = worker.jetstream()
    psub = await wjs.pull_subscribe_bind(s.WORKERS_CONSUMER, stream=s.JOBS_STREAM)
    (msg,) = await psub.fetch(1, timeout=5)
    ack = await wjs.publish(s.events_subject("r-1", "j-1"), b"{}")
    await msg.ack_sync()
    assert ack.stream == s.EVENTS_STREAM
    assert (await gjs.stream_info(s.JOBS_STREAM)).state.messages == 0  # acked: gone
    assert violations.errors == []


async def test_debug_reads_streams_and_live_traffic(connect_as: ConnectAs) -> None:
    gateway = await connect_as("gateway")
    gjs = gateway.jetstream()
    await ensure_streams(gjs, StreamSettings())
    await gjs.publish(s.audit_subject("local"), b'{"action": "submit_job"}')
    violations = Violations()
    debug = await connect_as("debug", violations.on_error)
    djs = debug.jetstream()
    assert (await djs.stream_info(s.AUDIT_STREAM)).state.messages == 1
    stored = await djs.subscribe(s.AUDIT_ALL, stream=s.AUDIT_STREAM, ordered_consumer=True)
    assert (await stored.next_msg(timeout=5)).data == b'{"action": "submit_job"}'
    live = await debug.subscribe(f"{s.PREFIX}.>")
    await debug.flush()
    await gateway.publish(s.cancel_subject("j-1"), b"{}")
    assert (await live.next_msg(timeout=5)).subject == s.cancel_subject("j-1")
    assert violations.errors == []
