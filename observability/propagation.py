"""W3C trace context in NATS message headers, so one trace follows a job across services."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate
from opentelemetry.context import Context


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `headers` with `traceparent` (and `tracestate`) of the current span added."""
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The context a publisher injected; an empty one when the message carried none."""
    return propagate.extract(dict(headers or {}))
