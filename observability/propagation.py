"""W3C trace context over NATS message headers, so one job is one trace across services."""

from collections.abc import Mapping

from opentelemetry import propagate
from opentelemetry.context import Context


def inject_headers(
    headers: dict[str, str] | None = None, context: Context | None = None
) -> dict[str, str]:
    """A copy of `headers` plus ``traceparent``/``tracestate`` (and ``baggage``) of
    `context` (default: the current one); nothing is added outside a recorded span."""
    carrier = dict(headers or {})
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The remote parent carried by `headers` (nats-py gives None for a message without
    headers); pass it as ``context=`` when starting the consumer's span."""
    return propagate.extract(headers or {})
