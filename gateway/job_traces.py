"""One trace per job of a run: each job's publish span starts its own trace, linked to the
run's batch publish, so that Jaeger shows a job's story alone and the run's as links."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, format_trace_id

from bus import subjects as s
from observability import inject_headers
from observability.tracing import unexported_root_span

tracer = trace.get_tracer(__name__)


@contextmanager
def job_traces(tenant: str, run_id: str, job_ids: list[str]) -> Iterator[list[Span]]:
    """A producer span per job, each the root of a new trace linked to the current span."""
    batch = trace.get_current_span().get_span_context()
    links = [Link(batch)] if batch.is_valid else []
    subject = s.job_subject(tenant)
    spans = [_job_span(subject, run_id, job_id, links) for job_id in job_ids]
    try:
        yield spans
    except BaseException as exc:
        for span in spans:
            span.set_status(Status(StatusCode.ERROR, repr(exc)))
        raise
    finally:
        for span in spans:
            span.end()


def _job_span(subject: str, run_id: str, job_id: str, links: list[Link]) -> Span:
    name = f"publish {s.JOBS_STREAM}"
    attributes = {
        "messaging.system": "nats",
        "messaging.operation.type": "publish",
        "messaging.destination.name": subject,
        "messaging.message.id": job_id,
        "crucible.job_id": job_id,
        "crucible.run_id": run_id,
    }
    span = unexported_root_span(name, SpanKind.PRODUCER, links, attributes)
    if span is not None:
        return span
    return tracer.start_span(
        name,
        context=Context(),  # no parent: the job's own trace
        kind=SpanKind.PRODUCER,
        links=links,
        attributes=attributes,
    )


def span_trace_id(span: Span) -> str | None:
    context = span.get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else None


def span_headers(span: Span) -> dict[str, str]:
    """Headers carrying `span` as the parent of whatever consumes the message."""
    return inject_headers(context=trace.set_span_in_context(span))
