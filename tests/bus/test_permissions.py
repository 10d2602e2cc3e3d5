"""Each service's NATS identity can do its job and nothing else (real nats-server)."""

from __future__ import annotations

import asyncio

import pytest

from bus import NatsSettings, StreamSettings, connect, ensure_streams
from bus import subjects as s
from tests.stack import NatsServer


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


def settings(server: NatsServer, service: str) -> NatsSettings:
    return NatsSettings(url=server.layout.url, creds_file=server.layout.creds_files[service])


async def test_worker_cannot_enqueue_a_job(nats_server: NatsServer) -> None:
    gateway = await connect(settings(nats_server, "gateway"), "gateway", "g")
    await ensure_streams(gateway.jetstream(), StreamSettings())
    violations = Violations()
    worker = await connect(settings(nats_server, "worker"), "worker", "w", violations.on_error)
    with pytest.raises(Exception):  # noqa: B017 - a refused JS publish surfaces as a timeout
        await worker.jetstream().publish(s.job_subject("j-forged"), b"{}", timeout=1)
    await violations.wait_for(f'publish to "{s.job_subject("j-forged")}"')
    assert "Publish Violation" in nats_server.log()
    # Nothing reached the queue.
    info = await gateway.jetstream().stream_info(s.JOBS_STREAM)
    assert info.state.messages == 0
    await worker.close()
    await gateway.close()


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
        ("gateway", "publish", f"$JS.ACK.{s.JOBS_STREAM}.{s.WORKERS_CONSUMER}.1.1.1.1.1.0"),
    ],
)
async def test_forbidden_actions_are_refused(
    nats_server: NatsServer, service: str, action: str, subject: str
) -> None:
    violations = Violations()
    client = await connect(settings(nats_server, service), service, service, violations.on_error)
    try:
        if action == "publish":
            await client.publish(subject, b"{}")
        else:
            await client.subscribe(subject)
        await client.flush()
        word = "publish" if action == "publish" else "subscription"
        await violations.wait_for(f'{word} to "{subject}"')
    finally:
        await client.close()


async def test_worker_can_fetch_ack_and_publish_events(nats_server: NatsServer) -> None:
    gateway = await connect(settings(nats_server, "gateway"), "gateway", "g")
    gjs = gateway.jetstream()
    await ensure_streams(gjs, StreamSettings())
    await gjs.publish(s.job_subject("j-1"), b"{}")
    violations = Violations()
    worker = await connect(settings(nats_server, "worker"), "worker", "w", violations.on_error)
    wjs = worker.jetstream()
    psub = await wjs.pull_subscribe_bind(s.WORKERS_CONSUMER, stream=s.JOBS_STREAM)
    (msg,) = await psub.fetch(1, timeout=5)
    ack = await wjs.publish(s.events_subject("r-1", "j-1"), b"{}")
    await msg.ack_sync()
    assert ack.stream == s.EVENTS_STREAM
    assert (await gjs.stream_info(s.JOBS_STREAM)).state.messages == 0  # acked: gone
    assert violations.errors == []
    await worker.close()
    await gateway.close()
