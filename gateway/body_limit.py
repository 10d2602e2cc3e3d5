"""Refuse request bodies above a size with 413 before anything parses them."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    """Bounded bodies: by `Content-Length` when given, by counting when chunked."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, larger_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.larger_limits = larger_limits or {}  # path prefix -> its own limit

    def _limit(self, path: str) -> int:
        for prefix, limit in self.larger_limits.items():
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.max_body_bytes

    def _refuse(self, size: str, limit: int) -> JSONResponse:
        return JSONResponse(
            {"detail": f"request body is {size}; this gateway accepts at most {limit} bytes"},
            status_code=413,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(f"{int(declared)} bytes", limit)(scope, receive, send)
            return
        # Read the whole (bounded) body first, then replay it: a chunked upload cannot slip
        # past the limit, and the app never sees half a body.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(f"over {limit} bytes", limit)(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
