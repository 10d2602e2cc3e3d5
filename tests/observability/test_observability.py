"""Tracing over real OTLP/HTTP, trace context across a NATS-style header hop, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_span_id, format_trace_id

from observability import extract_context, inject_headers, job_id_var
from observability.logging import JsonFormatter
from tests.otlp_receiver import OtlpReceiver

EXPORTING_PROGRAM = """
from opentelemetry import trace
from observability import setup_tracing, shutdown_tracing, inject_headers, extract_context
setup_tracing("crucible-test")
tracer = trace.get_tracer("t")
with tracer.start_as_current_span("parent", kind=trace.SpanKind.PRODUCER):
    headers = inject_headers()
with tracer.start_as_current_span("child", context=extract_context(headers)):
    pass
shutdown_tracing()
"""


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    otlp.start()
    yield otlp
    otlp.stop()


def test_spans_reach_an_otlp_receiver_with_parents(receiver: OtlpReceiver) -> None:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    subprocess.run([sys.executable, "-c", EXPORTING_PROGRAM], env=env, check=True, timeout=60)
    spans = receiver.wait_for(lambda s: len(s) >= 2, timeout_s=10)
    by_name = {span.name: span for span in spans}
    assert by_name["child"].trace_id == by_name["parent"].trace_id
    assert by_name["child"].parent_span_id == by_name["parent"].span_id
    assert by_name["parent"].kind == "SPAN_KIND_PRODUCER"
    assert {span.service_name for span in spans} == {"crucible-test"}


def test_without_an_endpoint_nothing_is_exported(receiver: OtlpReceiver) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-c", EXPORTING_PROGRAM], env=env, check=True, timeout=60)
    assert receiver.spans() == []


def test_context_survives_the_header_round_trip() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("publish") as publish:
        headers = inject_headers({"Nats-Msg-Id": "x"})
    assert headers["Nats-Msg-Id"] == "x" and "traceparent" in headers
    with tracer.start_as_current_span("process", context=extract_context(headers)) as process:
        pass
    assert process.get_span_context().trace_id == publish.get_span_context().trace_id
    assert process.parent is not None
    assert process.parent.span_id == publish.get_span_context().span_id
    assert extract_context(None) == extract_context({})


def test_json_log_lines_carry_trace_span_and_job_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("worker"))
    logger = logging.getLogger("test.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    tracer = TracerProvider().get_tracer("t")
    token = job_id_var.set("j-123")
    try:
        with tracer.start_as_current_span("work") as span:
            logger.info("job %s", "started", extra={"attempt": 2})
    finally:
        job_id_var.reset(token)
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    context = span.get_span_context()
    assert line["message"] == "job started"
    assert line["service"] == "worker" and line["level"] == "INFO"
    assert line["trace_id"] == format_trace_id(context.trace_id)
    assert line["span_id"] == format_span_id(context.span_id)
    assert line["job_id"] == "j-123" and line["attempt"] == 2
