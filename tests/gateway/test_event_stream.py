"""Event streams' frames skip the app's layers; their start and end still go through them.
Under uvicorn's httptools server (what `crucible gateway` runs), a live tail may also write
frames to the connection itself, which it declines when the connection cannot take them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus import BusUnavailableError
from gateway.event_stream import (
    BROKE_OFF,
    DirectWrites,
    EventStreamResponse,
    install_server_send,
)
from tests.stack import free_port

FRAMES = [ServerSentEvent(id=str(i), event="stdout", data=f"line {i}").encode() for i in range(5)]
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class Watch:
    """A layer that notes every message sent through it."""

    def __init__(self, app: ASGIApp, seen: list[Message]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch(message: Message) -> None:
            self.seen.append(message)
            await send(message)

        await self.app(scope, receive, watch)


async def frames() -> AsyncIterator[bytes]:
    for frame in FRAMES:
        yield frame


def stream_app(seen: list[Message], direct: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/ours", response_model=None)
    async def ours() -> EventStreamResponse:
        return EventStreamResponse(frames(), ping=15, headers=HEADERS)

    @app.get("/library", response_model=None)
    async def library() -> EventSourceResponse:
        return EventSourceResponse(frames(), ping=15, headers=HEADERS)

    @app.get("/missing", response_model=None)
    async def missing() -> EventStreamResponse:
        raise HTTPException(404, "no such job")

    @app.get("/breaks-off", response_model=None)
    async def breaks_off() -> EventStreamResponse:
        async def frames_then_bus_lost() -> AsyncIterator[bytes]:
            yield FRAMES[0]
            yield FRAMES[1]
            raise BusUnavailableError("reading events failed: TimeoutError()")

        return EventStreamResponse(frames_then_bus_lost(), ping=15, headers=HEADERS)

    @app.get("/broken", response_model=None)
    async def broken() -> EventStreamResponse:
        raise LookupError("before the stream")

    app.add_middleware(Watch, seen=seen)
    if direct:
        install_server_send(app)
    return app


async def get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.get(path)


async def test_frames_go_straight_to_the_server_and_only_start_and_end_through_layers() -> None:
    seen: list[Message] = []
    response = await get(stream_app(seen, direct=True), "/ours")
    assert response.content == b"".join(FRAMES)
    assert [(m["type"], m.get("more_body")) for m in seen] == [
        ("http.response.start", None),
        ("http.response.body", False),
    ]
    assert seen[0]["status"] == 200


async def test_without_server_send_every_frame_goes_through_the_layers() -> None:
    seen: list[Message] = []
    response = await get(stream_app(seen, direct=False), "/ours")
    assert response.content == b"".join(FRAMES)
    assert [m.get("body") for m in seen[1:]] == [*FRAMES, b""]


async def test_the_bytes_and_headers_are_sse_starlettes() -> None:
    app = stream_app([], direct=True)
    ours, library = await get(app, "/ours"), await get(app, "/library")
    assert ours.content == library.content
    assert ours.headers == library.headers
    assert ours.headers["content-type"] == "text/event-stream; charset=utf-8"


@pytest.mark.parametrize("direct", [True, False])
async def test_errors_before_the_stream_keep_their_status(direct: bool) -> None:
    seen: list[Message] = []
    app = stream_app(seen, direct)
    missing = await get(app, "/missing")
    assert (missing.status_code, missing.json()) == (404, {"detail": "no such job"})
    assert seen[0]["status"] == 404
    assert seen[1]["body"] == missing.content  # the audit layer reads error bodies
    assert (await get(app, "/broken")).status_code == 500


@pytest.mark.parametrize("direct", [True, False])
async def test_a_stream_that_loses_the_bus_ends_as_a_stream_with_a_word_and_a_warning(
    direct: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Not an "Exception in ASGI application" with a traceback and a cut connection: NATS
    # losing a node is an event of the trade, and the client resumes with Last-Event-ID.
    seen: list[Message] = []
    response = await get(stream_app(seen, direct), "/breaks-off")
    assert response.status_code == 200
    assert response.content == FRAMES[0] + FRAMES[1] + BROKE_OFF
    assert (seen[-1]["type"], seen[-1]["more_body"]) == ("http.response.body", False)
    (record,) = [r for r in caplog.records if r.name == "gateway.event_stream"]
    assert record.levelname == "WARNING" and record.exc_info is None
    assert "/breaks-off" in record.getMessage() and "TimeoutError" in record.getMessage()


def direct_app(frames: Callable[[DirectWrites], AsyncIterator[bytes]]) -> FastAPI:
    app = FastAPI()

    @app.get("/direct", response_model=None)
    async def direct() -> EventStreamResponse:
        writes = DirectWrites()
        return EventStreamResponse(frames(writes), direct=writes, ping=15, headers=HEADERS)

    install_server_send(app)
    return app


async def serve(app: FastAPI) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http="httptools", log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{port}/direct"


def every_other_frame_direct(taken: list[bool]) -> Callable[[DirectWrites], AsyncIterator[bytes]]:
    async def frames(direct: DirectWrites) -> AsyncIterator[bytes]:
        for number, frame in enumerate(FRAMES):
            if number % 2 == 0:
                yield frame
            else:
                taken.append(direct(frame))
                if not taken[-1]:
                    yield frame  # declined: it goes the usual way

    return frames


async def test_under_uvicorn_direct_writes_reach_the_wire_in_order() -> None:
    taken: list[bool] = []
    server, task, url = await serve(direct_app(every_other_frame_direct(taken)))
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
            head = await client.head(url)
    finally:
        server.should_exit = True
        await task
    assert response.content == b"".join(FRAMES)
    assert response.headers["transfer-encoding"] == "chunked"
    assert head.content == b""
    assert taken == [True, True]  # a HEAD request does not run the stream


async def test_elsewhere_direct_writes_are_declined() -> None:
    taken: list[bool] = []
    response = await get(direct_app(every_other_frame_direct(taken)), "/direct")
    assert response.content == b"".join(FRAMES)
    assert taken == [False, False]


async def test_a_connection_that_does_not_read_makes_direct_writes_decline() -> None:
    # The client reads nothing: once the kernel's buffers and uvicorn's are full, the
    # connection cannot take a write without waiting, and a live tail must not push to it.
    block = b"x" * 65536
    written = 0
    declined = asyncio.Event()

    async def frames(direct: DirectWrites) -> AsyncIterator[bytes]:
        nonlocal written
        yield FRAMES[0]
        while written < 256 * 1024 * 1024 and direct(block):
            written += len(block)
        declined.set()
        yield FRAMES[1]

    server, task, url = await serve(direct_app(frames))
    host, port = url.split("/")[2].split(":")
    reader = socket.create_connection((host, int(port)))
    try:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sendall(b"GET /direct HTTP/1.1\r\nHost: gateway\r\n\r\n")
        await asyncio.wait_for(declined.wait(), 10)
    finally:
        reader.close()
        server.should_exit = True
        await task
    assert 0 < written < 256 * 1024 * 1024


async def test_a_stream_whose_client_is_gone_before_it_starts_still_closes() -> None:
    # The client left before the status line could go out: the stream's generator never
    # starts, so no `finally` of its own runs; what it holds (a submission's watch of its
    # job) is let go of by `on_close`, once.
    started: list[bool] = []
    closed: list[bool] = []

    async def held() -> AsyncIterator[bytes]:
        started.append(True)
        yield FRAMES[0]

    async def receive() -> Message:
        await asyncio.Event().wait()  # no disconnect message: the send fails first
        raise AssertionError("unreachable")

    async def gone(message: Message) -> None:
        raise OSError("the client is gone")

    response = EventStreamResponse(held(), ping=15, on_close=lambda: closed.append(True))
    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with pytest.raises(BaseException):  # noqa: B017 - whatever the server sees (a group of one)
        await response(scope, receive, gone)
    assert (started, closed) == ([], [True])
