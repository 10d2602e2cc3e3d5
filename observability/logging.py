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

# Set once per job by the worker; every log line inside the job then carries it.
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_QUIET = ("nats", "httpx", "httpcore", "asyncio")


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
    fields.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
    if record.exc_info:
        fields["exception"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_fields(record, self._service), default=str).decode()


class TextFormatter(logging.Formatter):
    """For people at a terminal: the same fields, as `key=value` after the message."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self._service)
        head = f"{fields.pop('time')} {fields.pop('level'):<7} {fields.pop('service')}"
        message = fields.pop("message")
        exception = fields.pop("exception", None)
        fields.pop("logger")
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{head} {message} {tail}".rstrip()
        return f"{line}\n{exception}" if exception else line


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
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
