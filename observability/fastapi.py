"""Server spans for the gateway's HTTP API."""

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from observability.redact import redact_span_urls

# Probes and scrapes arrive every few seconds and would bury the job traces. Patterns are
# regexes searched in the full URL (no query string), hence the anchors.
_EXCLUDED_URLS = "/healthz$,/readyz$,/metrics$"


def instrument_app(app: FastAPI) -> None:
    """Trace every request to `app` except probes and metrics.

    Spans go to the global tracer provider, resolved lazily, so this may run before
    ``setup_tracing``.
    """
    # No span per ASGI send and receive: an event stream would make one per event, for every
    # client (costly with many clients, and noise in each trace).
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=_EXCLUDED_URLS,
        exclude_spans=["receive", "send"],
        server_request_hook=redact_span_urls,
    )
