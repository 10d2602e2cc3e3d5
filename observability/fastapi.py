"""Server spans for the gateway's HTTP requests."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

# Probes and scrapes every few seconds would bury the job traces.
_NOT_TRACED = "/healthz,/readyz,/metrics"


def instrument_app(app: FastAPI) -> None:
    """Trace every request but the probes, as children of an incoming `traceparent`."""
    FastAPIInstrumentor.instrument_app(app, excluded_urls=_NOT_TRACED)
