"""Event streams' frames skip the app's layers; their start and end still go through them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.event_stream import EventStreamResponse, install_server_send

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
