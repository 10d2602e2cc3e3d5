"""Watching the platform: tracing (OTLP), trace context over NATS, structured logs.

Configuration comes from the standard `OTEL_*` environment variables. Errors: a tracing
setting this platform cannot honour raises ValueError at start-up.
"""

from observability.fastapi import instrument_app
from observability.logging import job_id_var, setup_logging
from observability.propagation import extract_context, inject_headers
from observability.tracing import current_trace_id, setup_tracing, shutdown_tracing

__all__ = [
    "current_trace_id",
    "extract_context",
    "inject_headers",
    "instrument_app",
    "job_id_var",
    "setup_logging",
    "setup_tracing",
    "shutdown_tracing",
]
