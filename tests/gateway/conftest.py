"""Fixtures of the gateway's event stream tests: a gateway's bus, and a worker's and an
operator's connections beside it, on a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from bus import StreamSettings, connect
from gateway import live_tail
from gateway.bus_client import GatewayBus
from gateway.workers_registry import WorkerRegistry
from tests.gateway.job_events import FEED_LINGER_S
from tests.stack import NatsServer


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[GatewayBus]:
    # The event feed stops soon after its last watcher leaves: the tests count consumers.
    gateway = await GatewayBus.start(
        nats_server.settings("gateway"), StreamSettings(), WorkerRegistry(10.0), FEED_LINGER_S
    )
    yield gateway
    await gateway.close()


@pytest.fixture
async def worker(nats_server: NatsServer, bus: GatewayBus) -> AsyncIterator[JetStreamContext]:
    nc = await connect(nats_server.settings("worker"), "worker", "test-worker")
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def debug(nats_server: NatsServer, bus: GatewayBus) -> AsyncIterator[JetStreamContext]:
    nc = await connect(nats_server.settings("debug"), "debug", "test-debug")
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
def small_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_tail, "RETAIN_ENTRIES", 16)
