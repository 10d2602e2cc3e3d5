"""A flush on a Crucible connection comes after everything queued before it, on the wire.

What rides on it: "subscribed, then flushed" has to mean the server holds the subscription,
or a cancel published from another connection right after finds no worker listening.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from bus import connect
from bus import subjects as s
from tests.stack import NatsServer


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: bytearray
) -> None:
    with suppress(ConnectionError):
        while data := await reader.read(65536):
            seen += data
            writer.write(data)
            await writer.drain()


@asynccontextmanager
async def recording_proxy(server: NatsServer, sent: bytearray) -> AsyncIterator[str]:
    """A TCP hop in front of the real server that keeps every byte the client sends."""
    host, port = server.layout.url.removeprefix("nats://").rsplit(":", 1)
    pipes: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(port))
        writers.extend((client_w, server_w))
        pipes.append(asyncio.create_task(_pipe(client_r, server_w, sent)))
        pipes.append(asyncio.create_task(_pipe(server_r, client_w, bytearray())))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield f"nats://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    finally:
        proxy.close()
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for writer in writers:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
        await proxy.wait_closed()


async def test_the_flush_ping_follows_the_subscribe_before_it(nats_server: NatsServer) -> None:
    sent = bytearray()
    async with recording_proxy(nats_server, sent) as url:
        settings = nats_server.settings("worker").model_copy(update={"url": url})
        nc = await connect(settings, "worker", "w")
        connected = len(sent)  # CONNECT and its PING
        await nc.subscribe(s.CANCEL_ALL)
        await nc.flush()
        after = bytes(sent[connected:])
        await nc.close()
    assert after.startswith(f"SUB {s.CANCEL_ALL} ".encode()), after
    assert after.index(b"PING\r\n") > after.index(b"SUB "), after
