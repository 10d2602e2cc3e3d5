"""Structured logs: one JSON object a line, carrying the service, trace and job ids."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from opentelemetry import trace
from opentelemetry.trace import format_span_id, format_trace_id

from observability.redact import RedactUrls

# Set once per job by the worker; every log line inside the job then carries it.
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# Chatty at INFO (a line per reconnect attempt or HTTP request); their warnings still show.
_QUIET = ("nats", "httpx", "httpcore", "asyncio")


_TRACEBACKS = logging.Formatter()


def _fields(record: logging.LogRecord, service: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "service": service,
        "logger": record.name,
        "message": record.getMessage(),
    }
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format_trace_id(span.trace_id)
        fields["span_id"] = format_span_id(span.span_id)
    job_id = getattr(record, "job_id", None) or job_id_var.get()
    if job_id:
        fields["job_id"] = job_id
    # An `extra` may not pass itself off as the service, level or trace of the line.
    for key, value in record.__dict__.items():
        if key not in _STANDARD:
            fields.setdefault(key, value)
    if record.exc_info:
        fields["exception"] = _TRACEBACKS.formatException(record.exc_info)
    if record.stack_info:
        fields["stack"] = record.stack_info
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line; values JSON cannot hold are written as their `str`."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self._service)
        try:
            return orjson.dumps(fields, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:
            # `default` is not consulted for ints beyond 64 bits or over-deep nesting; a log
            # line must never be lost to its payload.
            return orjson.dumps({k: _plain(v) for k, v in fields.items()}).decode()


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | bool | float | None) else str(value)


class TextFormatter(logging.Formatter):
    """For people at a terminal: the same fields, as `key=value` after the message."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self._service)
        head = (
            f"{fields.pop('time')} {fields.pop('level'):<7} {fields.pop('service')} "
            f"{fields.pop('logger')}: {fields.pop('message')}"
        )
        # Multi-line parts go last so the key=value line stays greppable.
        blocks = [fields.pop(key) for key in ("exception", "stack") if key in fields]
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        return "\n".join([f"{head} {tail}".rstrip(), *blocks])


def setup_logging(service: str, fmt: Literal["json", "text"] = "json", level: str = "INFO") -> None:
    """Send every log record (uvicorn's included) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactUrls) for f in access.filters):
        access.addFilter(RedactUrls())  # its lines carry each request's query string
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
