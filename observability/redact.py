"""Secrets that travel in URLs kept out of logs and traces.

An event stream's `events_url` carries a signed token (`?token=...`) that opens the stream
to whoever holds it until it expires: browsers' EventSource cannot send a header. Whoever
reads the gateway's logs or the traces in Jaeger must not be able to replay it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from opentelemetry.trace import Span

# At a query's start too: url.query holds the query alone, without its `?`.
_SECRET_PARAM = re.compile(r"((?:^|[?&])token=)[^&#\s\"]*")
_REDACTED = r"\1REDACTED"
# The attributes that hold a request's query string, in the old and the stable conventions.
_URL_ATTRIBUTES = ("http.url", "url.full", "url.query", "http.target")


def redact_url(text: str) -> str:
    """`text` with the value of every `token` query parameter replaced by REDACTED."""
    return _SECRET_PARAM.sub(_REDACTED, text)


class RedactUrls(logging.Filter):
    """Redacts the URLs in a log record's arguments (uvicorn's access lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_span_urls(span: Span, scope: dict[str, Any]) -> None:
    """A server span's request hook: its URL attributes without the stream token's value."""
    if not span.is_recording() or b"token=" not in scope.get("query_string", b""):
        return
    attributes = getattr(span, "attributes", None) or {}  # the SDK's spans expose theirs
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str):
            span.set_attribute(key, redact_url(value))
