"""Tracing: one global OpenTelemetry SDK provider per process, configured by the standard
``OTEL_*`` environment so that deployments (Jaeger, a collector) need no code change."""

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    format_trace_id,
)
from opentelemetry.util.types import Attributes

_SPAN_QUEUE = 65_536
_PROTOCOL_HTTP = "http/protobuf"
_PROTOCOL_GRPC = "grpc"
_EXPORTER_OTLP = "otlp"
_EXPORTER_NONE = "none"

# The provider this module installed; the OTel global can be set only once per process, so this
# is also what makes setup_tracing idempotent.
_provider: TracerProvider | None = None
_exporting = False  # whether `_provider` sends its spans anywhere


def setup_tracing(service_name: str) -> None:
    """Install the global tracer provider for `service_name` (``OTEL_SERVICE_NAME`` wins).

    Spans are exported over OTLP only when the environment asks for it; otherwise the provider
    still creates real trace ids (for logs and results) but sends nothing. Later calls do
    nothing. Raises ValueError for an exporter or protocol this platform does not ship.
    """
    global _provider, _exporting
    if _provider is not None or _env_flag(OTEL_SDK_DISABLED):
        return
    resource = Resource.create({SERVICE_NAME: os.environ.get(OTEL_SERVICE_NAME) or service_name})
    provider = TracerProvider(resource=resource)
    if _otlp_requested():
        # BatchSpanProcessor reads OTEL_BSP_* itself (delay, queue and batch sizes), but its
        # default queue (2,048) would drop spans: a 10,000-job run makes a span per job at once.
        queue = None if os.environ.get(OTEL_BSP_MAX_QUEUE_SIZE) else _SPAN_QUEUE
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(), max_queue_size=queue))
        _exporting = True
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown_tracing() -> None:
    """Flush pending spans and stop exporting; call once when the service exits.

    The OTel global provider cannot be replaced, so tracing stays off for the rest of the
    process.
    """
    if _provider is not None:
        _provider.shutdown()


def unexported_root_span(
    name: str, kind: SpanKind, links: Sequence[Link], attributes: Attributes
) -> Span | None:
    """The root of a new trace as this process's SDK would start it (ids, sampling decision,
    flags) but non-recording, when nothing it records is exported; else None, and the caller
    starts a real span. Recording a span that no one can see cost a run ~10 us per job,
    while its ids (in results, and in the headers it gives what a job's worker records) are
    the same either way."""
    # An empty context, as the span has no parent: None would make ParentBased samplers
    # take the caller's current span for one.
    return unexported_span(name, kind, Context(), attributes, links)


def unexported_span(
    name: str,
    kind: SpanKind,
    context: Context | None,
    attributes: Attributes,
    links: Sequence[Link] = (),
) -> Span | None:
    """A span under `context`'s span (the current one for None) as this process's SDK would
    start it: its parent's trace id (a new one for a root), a new span id, the sampler's
    decision and trace state, but non-recording, when nothing it records is exported; else
    None, and the caller starts a real span."""
    if _provider is None or _exporting:
        return None
    parent = trace.get_current_span(context).get_span_context()
    ids = _provider.id_generator
    if parent.is_valid:
        trace_id, random_trace_id = parent.trace_id, parent.trace_flags.random_trace_id
    else:
        trace_id, random_trace_id = ids.generate_trace_id(), ids.is_trace_id_random()
    sampling = _provider.sampler.should_sample(context, trace_id, name, kind, attributes, links)
    flags = TraceFlags.SAMPLED if sampling.decision.is_sampled() else TraceFlags.DEFAULT
    if random_trace_id:
        flags |= TraceFlags.RANDOM_TRACE_ID
    span_context = SpanContext(
        trace_id,
        ids.generate_span_id(),
        is_remote=False,
        trace_flags=TraceFlags(flags),
        trace_state=sampling.trace_state,
    )
    return NonRecordingSpan(span_context)


def start_as_current_span(
    tracer: Tracer,
    name: str,
    context: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes = None,
) -> AbstractContextManager[Span]:
    """`tracer.start_as_current_span`, with a non-recording span when nothing is exported
    (`unexported_span`): the worker spent ~80 us per job recording two spans no one saw."""
    span = unexported_span(name, kind, context, attributes)
    if span is None:
        return tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes)
    return trace.use_span(span, end_on_exit=True)


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits, or None outside a recorded trace."""
    context = trace.get_current_span().get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def _otlp_requested() -> bool:
    exporters = {
        name.strip().lower()
        for name in os.environ.get(OTEL_TRACES_EXPORTER, "").split(",")
        if name.strip()
    }
    unsupported = exporters - {_EXPORTER_OTLP, _EXPORTER_NONE}
    if unsupported:
        raise ValueError(
            f"{OTEL_TRACES_EXPORTER}={os.environ[OTEL_TRACES_EXPORTER]!r}: "
            f"only {_EXPORTER_OTLP!r} or {_EXPORTER_NONE!r} are supported"
        )
    if exporters:
        return _EXPORTER_OTLP in exporters
    # Unset: the spec defaults to otlp, but a service without a collector must not spend its
    # shutdown retrying localhost:4318, so export only once an endpoint is configured.
    return bool(
        os.environ.get(OTEL_EXPORTER_OTLP_ENDPOINT)
        or os.environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
    )


def _otlp_exporter() -> SpanExporter:
    # Both exporters read their endpoint, headers, compression and timeout from the
    # environment; only the choice of transport is left to us.
    protocol = (
        os.environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
        or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
        or _PROTOCOL_HTTP
    ).strip()
    if protocol == _PROTOCOL_HTTP:
        return OTLPSpanExporter()
    if protocol == _PROTOCOL_GRPC:
        # Imported lazily: grpcio is heavy and most deployments use OTLP/HTTP.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    raise ValueError(
        f"OTLP protocol {protocol!r} is not supported: use {_PROTOCOL_HTTP!r} or {_PROTOCOL_GRPC!r}"
    )
