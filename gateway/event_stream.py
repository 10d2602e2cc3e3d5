"""SSE responses whose frames cost one plain `send` each, however many layers the app has.

Every layer around the gateway's routes (OpenTelemetry's ASGI middleware, the audit log,
Starlette's two error middlewares and its exception wrappers) wraps the ASGI `send`, and
sse-starlette opens a cancel scope around each one: with a thousand clients following a job,
every line of output went through all of that a thousand times. None of those layers looks
at a stream's body: they need its start (the status: the span's attribute, the audit's
outcome, whether an error can still become a 500) and its end (the request span ends with
it). So those two messages still go through the layers, and the frames in between go
straight to the server's own `send`, which `ServerSend` keeps in the scope.

The contract that this relies on: no layer between `ServerSend` and the route rewrites a
response body or holds back its start (a compressing middleware, or Starlette's
`BaseHTTPMiddleware`, would have to be added outside it).

One step further, `DirectWrites` lets a live tail write frames to the connection itself,
without a turn of the client's task (`gateway.live_tail.Push`). That needs the connection,
which ASGI does not give: it is the one place that knows uvicorn's httptools protocol (what
`crucible gateway` runs), and under any other server it declines every write, so the frames
take the way above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI
from sse_starlette import EventSourceResponse
from sse_starlette.event import ensure_bytes
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from bus import BusUnavailableError

log = logging.getLogger(__name__)

SERVER_SEND = "crucible.server_send"
EVENT_STREAM = "text/event-stream"
# On a submission answered with its own event stream: the stream's URL, to resume it.
EVENTS_URL_HEADER = "Crucible-Events-URL"

# `POST /v1/jobs`'s other answer, for the OpenAPI schema.
SUBMISSION_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "with `Accept: text/event-stream`: the job's event stream, from `queued` "
        "to `finished` (as `events_url` gives it)",
        "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
    }
}
_CLEANUP_TIMEOUT_S = 30.0  # as sse-starlette's: an interrupted stream's generator may clean up
# The last thing a stream says when it breaks off (a comment: clients skip it, curl shows it).
BROKE_OFF = b": the event stream broke off (NATS unavailable); resume with Last-Event-ID\n\n"


def wants_event_stream(accept: str | None) -> bool:
    """Whether an `Accept` header lists `text/event-stream` (with a quality above 0)."""
    for media_range in (accept or "").split(","):
        media_type, *params = (part.strip() for part in media_range.split(";"))
        if media_type.lower() == EVENT_STREAM and not any(
            param.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for param in params
        ):
            return True
    return False


class ServerSend:
    """The outermost layer: keeps the server's own `send` in the scope, for stream frames."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


def install_server_send(app: FastAPI) -> None:
    """Put `ServerSend` outside every other layer of `app` (tracing's included, so this
    runs after `instrument_app`, which replaces the same builder)."""
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return ServerSend(build())

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


class DirectWrites:
    """Writes a stream's frames to its connection at once, as one HTTP/1.1 chunk, whenever
    the connection takes them without waiting (see `gateway.live_tail.Push`)."""

    def __init__(self) -> None:
        self._cycle: RequestResponseCycle | None = None

    def bind(self, server_send: Send) -> None:
        """Write to the connection that `server_send` (the server's own) sends to."""
        cycle = getattr(server_send, "__self__", None)
        # A HEAD response has no body to write into.
        if isinstance(cycle, RequestResponseCycle) and cycle.scope["method"] != "HEAD":
            self._cycle = cycle

    def __call__(self, frames: bytes) -> bool:
        cycle = self._cycle
        if (
            cycle is None
            or not cycle.response_started  # the status line goes first, through the layers
            or cycle.response_complete
            or not cycle.chunked_encoding
            or cycle.disconnected
            or cycle.flow.write_paused  # the client is slow: its task waits for the drain
            or cycle.transport.is_closing()
        ):
            return False
        # As uvicorn frames a body message (its `send`, without the await).
        cycle.transport.write(b"%x\r\n%b\r\n" % (len(frames), frames))
        return True


class EventStreamResponse(EventSourceResponse):
    """sse-starlette's response (keep-alives, disconnect and shutdown handling, HEAD), with
    its frames written straight to the server when `ServerSend` is installed, and bound to
    `direct` (which the stream's live tail may write to) when the server allows it."""

    _frames_send: Send
    _path: str

    def __init__(
        self,
        *args: Any,
        direct: DirectWrites | None = None,
        on_close: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._direct = direct
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._frames_send = scope.get(SERVER_SEND, send)
        self._path = scope.get("path", "")
        if self._direct is not None and SERVER_SEND in scope:
            self._direct.bind(scope[SERVER_SEND])
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the response ends, even before its stream began (a client gone at
            # once: a generator never started runs no `finally` of its own).
            if self._on_close is not None:
                self._on_close()

    async def _stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        write = self._frames_send
        try:
            async for data in self.body_iterator:
                # No per-send timeout (none is set) and so no cancel scope per frame.
                body = ensure_bytes(data, self.sep)
                await write({"type": "http.response.body", "body": body, "more_body": True})
        except BusUnavailableError as exc:
            # Its status went out long ago: no error response can follow. The stream ends
            # as a stream does, and its client resumes where it got to, as after any drop
            # (EventSource, the CLI and `crucible.client` reconnect on their own).
            log.warning("the event stream of %s broke off: %s", self._path, exc)
            await write({"type": "http.response.body", "body": BROKE_OFF, "more_body": True})
        except BaseException:
            # As sse-starlette does: the generator, suspended at a yield, cleans up now
            # (it leaves its live tail), not whenever it is collected.
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.move_on_after(_CLEANUP_TIMEOUT_S, shield=True):
                    await aclose()
            raise
        async with self._send_lock:
            self.active = False
            # Through every layer: the request span ends here.
            await send({"type": "http.response.body", "body": b"", "more_body": False})
