from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.otlp_receiver import OtlpReceiver

from sandbox import Sandbox
from tests.backends import BACKENDS, open_sandbox
from tests.stack import NatsServer, Stack, start_nats, start_stack


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    from tests.otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver) -> Iterator[Stack]:
    """One shared stack for the tests that do not break it, exporting traces to `otlp`."""
    running = start_stack(
        tmp_path_factory.mktemp("stack"),
        workers=2,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(params=BACKENDS)
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """Each backend in turn, checked and ready; Docker is skipped without an engine (not in CI)."""
    async with open_sandbox(request.param) as ready:
        yield ready
