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

# At a query's start too: url.query holds the query alone, without its `?`. Any letter of the
# name may come percent-encoded (`%74oken=` is `token=` to the gateway as well).
_SECRET_PARAM = re.compile(
    r"((?:^|[?&])(?:t|%74)(?:o|%6f)(?:k|%6b)(?:e|%65)(?:n|%6e)=)[^&#\s\"]*", re.IGNORECASE
)
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
    query = scope.get("query_string", b"").decode("latin-1")
    if not span.is_recording() or not _SECRET_PARAM.search(query):
        return
    attributes = getattr(span, "attributes", None) or {}  # the SDK's spans expose theirs
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str):
            span.set_attribute(key, redact_url(value))
