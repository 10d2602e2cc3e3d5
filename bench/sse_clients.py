"""SSE clients light enough to measure a gateway with, on the machine the gateway runs on.

A thousand httpx streams in one process cost about as much CPU per frame as the gateway
spends sending it (httpcore, h11 and the stream iterators run for every chunk), and on two
cores that CPU adds to the very delays the clients measure. Here, while a stream is live, a
client only notes each read of its socket with the time it came (one `data_received` call,
no task to wake); the HTTP/1.1 response is parsed, de-chunked and split into SSE frames once
every stream has ended, each frame timed by the read that completed it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

_HEAD_END = b"\r\n\r\n"
_FRAME_END = b"\r\n\r\n"  # sse-starlette's separator
_LINE_END = b"\r\n"


class StreamError(Exception):
    """The gateway did not answer with a chunked `200 OK` event stream, or cut it short."""


@dataclass
class Received:
    """One client's stream as it came: each read of the socket with its arrival time."""

    reads: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def connected_at(self) -> float:
        """When the response began (its first read)."""
        if not self.reads:
            raise StreamError("no response")
        return self.reads[0][0]

    def frames(self) -> Iterator[tuple[float, bytes]]:
        """Each SSE frame (without its blank line) and the time its last byte came."""
        raw = bytearray()
        body = bytearray()
        head_seen = False
        chunk_left = 0  # bytes of the current chunk still to come, then its CRLF
        for received_at, data in self.reads:
            raw += data
            if not head_seen:
                end = raw.find(_HEAD_END)
                if end < 0:
                    continue
                _check_head(bytes(raw[:end]))
                del raw[: end + len(_HEAD_END)]
                head_seen = True
            while raw:
                if chunk_left:
                    taken = min(chunk_left, len(raw))
                    body += raw[:taken]
                    del raw[:taken]
                    chunk_left -= taken
                    continue
                if raw.startswith(_LINE_END):  # the CRLF after a chunk's data
                    del raw[: len(_LINE_END)]
                    continue
                end = raw.find(_LINE_END)
                if end < 0:
                    break  # the chunk's size line is still coming
                chunk_left = int(bytes(raw[:end]).split(b";")[0], 16)
                del raw[: end + len(_LINE_END)]
                if chunk_left == 0:
                    return  # the last chunk: the response is complete
            while (end := body.find(_FRAME_END)) >= 0:
                yield received_at, bytes(body[:end])
                del body[: end + len(_FRAME_END)]
        raise StreamError("the stream ended before its last chunk")


def _check_head(head: bytes) -> None:
    status, *headers = head.split(_LINE_END)
    if not status.startswith(b"HTTP/1.1 200 "):
        raise StreamError(f"answered {status.decode(errors='replace')!r}")
    if b"transfer-encoding: chunked" not in (line.lower() for line in headers):
        raise StreamError("the response is not chunked")


class _Follower(asyncio.Protocol):
    def __init__(self, request: bytes, on_response: Callable[[], None] | None) -> None:
        self.request = request
        self.received = Received()
        self.closed = asyncio.get_running_loop().create_future()
        self._on_response = on_response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport: no isinstance here.
        cast("asyncio.WriteTransport", transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.received.reads and self._on_response is not None:
            self._on_response()
        self.received.reads.append((time.time(), data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def follow(url: str, on_response: Callable[[], None] | None = None) -> Received:
    """The stream at `url` read to its end (the request asks the gateway to close it there);
    `on_response` is called when the response begins."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"need a plain http URL with a port: {url}")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    transport, follower = await loop.create_connection(
        lambda: _Follower(request, on_response), parts.hostname, parts.port
    )
    try:
        await follower.closed
    finally:
        transport.close()
    return follower.received
