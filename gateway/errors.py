"""How bus failures reach clients: 503 when NATS is down, 429 when a tenant's queue is full.

Both say that nothing was stored and when to retry (`Retry-After`), so clients can back off.
"""

import math
from typing import Any

import nats.errors
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from bus import BusUnavailableError, QueueFullError

_BUS_DOWN_RETRY_AFTER_S = 5
# Jobs take seconds; by then some of the tenant's have finished and made room.
_QUEUE_FULL_RETRY_AFTER_S = 10


async def _bus_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the job bus is unavailable, nothing was stored; retry later ({exc})"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(_BUS_DOWN_RETRY_AFTER_S)},
    )


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"too many unfinished jobs, nothing was stored: {exc}"},
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(_QUEUE_FULL_RETRY_AFTER_S)},
    )


# NATS failing a read (a timeout under load, a lost connection) where no code of ours names
# it: the bus is unavailable to this request, which is a 503 to retry, not a 500.
NATS_UNAVAILABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with what the client sent made printable: a NaN, or a lone surrogate
    (valid JSON, not valid Unicode), would make the error itself fail to encode (a 500)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        {"detail": _printable(jsonable_encoder(exc.errors()))},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _not_unicode(request: Request, exc: Exception) -> JSONResponse:
    reason = f"{exc.__class__.__name__}: {_printable(str(exc))}"
    detail = f"the request holds text that is not valid Unicode ({reason}); send UTF-8"
    return JSONResponse(
        {"detail": detail + " without lone surrogates"},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


def _printable(value: Any) -> Any:
    """`value` with non-finite numbers as text and lone surrogates escaped."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, dict):
        return {_printable(key): _printable(item) for key, item in value.items()}
    return value


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(UnicodeEncodeError, _not_unicode)
    app.add_exception_handler(BusUnavailableError, _bus_unavailable)
    for error in NATS_UNAVAILABLE:
        app.add_exception_handler(error, _bus_unavailable)
    app.add_exception_handler(QueueFullError, _queue_full)


class ErrorBody(BaseModel):
    """Every error response: `detail` says what to fix (for a request that does not match the
    schema, a list of the fields at fault, as FastAPI reports them)."""

    detail: str | list[dict[str, Any]]


# Documented on every operation, so that the OpenAPI schema says what clients really get.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {"model": ErrorBody, "description": "no or bad API key"},
    status.HTTP_404_NOT_FOUND: {"model": ErrorBody, "description": "no such job or run (yours)"},
    status.HTTP_413_CONTENT_TOO_LARGE: {"model": ErrorBody, "description": "body or code too big"},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {"model": ErrorBody, "description": "invalid request"},
    status.HTTP_429_TOO_MANY_REQUESTS: {
        "model": ErrorBody,
        "description": "rate limit or queue cap reached; see Retry-After",
    },
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "model": ErrorBody,
        "description": "the job bus is down; nothing was stored; see Retry-After",
    },
}

ALREADY_FINISHED: dict[int | str, dict[str, Any]] = {
    status.HTTP_409_CONFLICT: {"model": ErrorBody, "description": "the job already finished"}
}
