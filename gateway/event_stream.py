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
"""

from __future__ import annotations

import anyio
from fastapi import FastAPI
from sse_starlette import EventSourceResponse
from sse_starlette.event import ensure_bytes
from starlette.types import ASGIApp, Receive, Scope, Send

SERVER_SEND = "crucible.server_send"
_CLEANUP_TIMEOUT_S = 30.0  # as sse-starlette's: an interrupted stream's generator may clean up


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


class EventStreamResponse(EventSourceResponse):
    """sse-starlette's response (keep-alives, disconnect and shutdown handling, HEAD), with
    its frames written straight to the server when `ServerSend` is installed."""

    _frames_send: Send

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._frames_send = scope.get(SERVER_SEND, send)
        await super().__call__(scope, receive, send)

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
