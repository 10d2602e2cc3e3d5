"""Tracing over real OTLP/HTTP to a real receiver, and trace context across a header hop.

The OTel global provider can be set once per process, so everything that calls
`setup_tracing` runs in a child interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_span_id, format_trace_id

from observability import current_trace_id, extract_context, inject_headers, setup_tracing
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60
ARRIVAL_TIMEOUT_S = 10

# A publisher span, its trace context through headers (as over NATS), a consumer span and a
# nested span under it; prints the trace id the process saw.
EXPORTING_PROGRAM = """
from opentelemetry import trace
from observability import (
    current_trace_id, extract_context, inject_headers, setup_tracing, shutdown_tracing,
)
setup_tracing("crucible-test")
setup_tracing("ignored-second-call")
tracer = trace.get_tracer("t")
with tracer.start_as_current_span("publish", kind=trace.SpanKind.PRODUCER):
    headers = inject_headers()
with tracer.start_as_current_span(
    "process", context=extract_context(headers), kind=trace.SpanKind.CONSUMER
):
    with tracer.start_as_current_span("sandbox.run", attributes={"lang": "py", "n": 3}):
        print(current_trace_id())
shutdown_tracing()
"""

# Requests go in through httpx's ASGI transport: the instrumented ASGI stack without a socket.
INSTRUMENTED_APP_PROGRAM = """
import asyncio
import httpx
from fastapi import FastAPI
from opentelemetry import trace
from observability import (
    current_trace_id, inject_headers, instrument_app, setup_tracing, shutdown_tracing,
)
setup_tracing("crucible-gateway")
app = FastAPI()

@app.get("/healthz")
def healthz() -> dict:
    return {}

@app.get("/jobs/{job_id}")
def job(job_id: str) -> dict:
    return {"trace_id": current_trace_id()}

instrument_app(app)
with trace.get_tracer("client").start_as_current_span("client") as client:
    headers = inject_headers()
    print(format(client.get_span_context().span_id, "016x"))
async def call() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        (await http.get("/healthz", headers=headers)).raise_for_status()
        print((await http.get("/jobs/j1", headers=headers)).json()["trace_id"])

asyncio.run(call())
shutdown_tracing()
"""

# The gateway's layering for an event stream: tracing, then the server's send outside it.
EVENT_STREAM_PROGRAM = """
import asyncio
import httpx
from fastapi import FastAPI
from gateway.event_stream import EventStreamResponse, install_server_send
from observability import instrument_app, setup_tracing, shutdown_tracing
setup_tracing("crucible-gateway")
app = FastAPI()

async def frames():
    for i in range(3):
        await asyncio.sleep(0.2)
        yield f"id: {i}\\r\\n\\r\\n".encode()

@app.get("/jobs/{job_id}/events", response_model=None)
async def events(job_id: str) -> EventStreamResponse:
    return EventStreamResponse(frames())

instrument_app(app)
install_server_send(app)
async def call() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        print((await http.get("/jobs/j1/events")).content.count(b"id: "))

asyncio.run(call())
shutdown_tracing()
"""


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    otlp.start()
    yield otlp
    otlp.stop()


def run_child(program: str, **env: str) -> list[str]:
    """Run `program` in a fresh interpreter without the caller's OTEL_* settings; stdout lines."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        env={**clean, "OTEL_BSP_SCHEDULE_DELAY": "100", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    # The SDK reports its trouble (failed exports, a second provider refused) through logging,
    # which Python's last-resort handler writes to stderr: any output there is a failure.
    assert (done.returncode, done.stderr) == (0, "")
    return done.stdout.splitlines()


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


def test_spans_reach_the_receiver_with_parents_and_service_name(receiver: OtlpReceiver) -> None:
    [printed_trace_id] = run_child(EXPORTING_PROGRAM, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    spans = by_name(receiver.wait_for(lambda s: len(s) >= 3, timeout_s=ARRIVAL_TIMEOUT_S))
    publish, process, run = spans["publish"], spans["process"], spans["sandbox.run"]
    assert publish.trace_id == process.trace_id == run.trace_id == printed_trace_id
    assert publish.parent_span_id == ""
    assert process.parent_span_id == publish.span_id
    assert run.parent_span_id == process.span_id
    assert (publish.kind, process.kind, run.kind) == (
        "SPAN_KIND_PRODUCER",
        "SPAN_KIND_CONSUMER",
        "SPAN_KIND_INTERNAL",
    )
    assert run.attributes == {"lang": "py", "n": 3}
    # setup_tracing is idempotent: the second call neither renamed the service nor doubled spans.
    assert {span.service_name for span in spans.values()} == {"crucible-test"}
    assert len(receiver.spans()) == 3


def test_otel_service_name_overrides_the_code(receiver: OtlpReceiver) -> None:
    run_child(
        EXPORTING_PROGRAM,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="from-env",
    )
    spans = receiver.wait_for(lambda s: len(s) >= 3, timeout_s=ARRIVAL_TIMEOUT_S)
    assert {span.service_name for span in spans} == {"from-env"}


def test_traces_endpoint_and_gzip_are_honoured(receiver: OtlpReceiver) -> None:
    run_child(
        EXPORTING_PROGRAM,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.endpoint}/v1/traces",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
    )
    spans = receiver.wait_for(lambda s: len(s) >= 3, timeout_s=ARRIVAL_TIMEOUT_S)
    assert set(by_name(spans)) == {"publish", "process", "sandbox.run"}


class GrpcTraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP/gRPC trace endpoint, keeping only span names: the HTTP tests check the rest."""

    def __init__(self) -> None:
        self.span_names: list[str] = []
        self.exported = threading.Event()

    def Export(  # the name the generated servicer dispatches to
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.span_names += [span.name for span in scope_spans.spans]
        self.exported.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_grpc_protocol_exports_to_a_grpc_collector() -> None:
    service = GrpcTraceService()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        # An http:// endpoint is what makes the gRPC exporter use a plaintext channel.
        run_child(
            EXPORTING_PROGRAM,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        )
        assert service.exported.wait(ARRIVAL_TIMEOUT_S)
    finally:
        server.stop(grace=None)
    assert sorted(service.span_names) == ["process", "publish", "sandbox.run"]


def test_without_an_endpoint_trace_ids_exist_but_nothing_is_exported(
    receiver: OtlpReceiver,
) -> None:
    [printed_trace_id] = run_child(EXPORTING_PROGRAM)
    assert len(printed_trace_id) == 32 and int(printed_trace_id, 16) != 0
    assert receiver.spans() == []


def test_sdk_disabled_means_no_trace_and_no_export(receiver: OtlpReceiver) -> None:
    [printed_trace_id] = run_child(
        EXPORTING_PROGRAM,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SDK_DISABLED="true",
    )
    assert printed_trace_id == "None"
    assert receiver.spans() == []


def test_shutdown_without_setup_is_harmless() -> None:
    assert run_child("from observability import shutdown_tracing; shutdown_tracing()") == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_TRACES_EXPORTER", "zipkin"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
)
def test_settings_the_platform_cannot_honour_fail_at_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # Both are rejected before the global provider is touched, so this can run in-process.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=value):
        setup_tracing("crucible-test")


def test_fastapi_server_spans_join_the_callers_trace_but_skip_probes(
    receiver: OtlpReceiver,
) -> None:
    client_span_id, handler_trace_id = run_child(
        INSTRUMENTED_APP_PROGRAM, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint
    )
    spans = receiver.wait_for(
        lambda s: any(span.kind == "SPAN_KIND_SERVER" for span in s),
        timeout_s=ARRIVAL_TIMEOUT_S,
    )
    [server] = [span for span in spans if span.kind == "SPAN_KIND_SERVER"]
    assert server.name == "GET /jobs/{job_id}"
    assert server.parent_span_id == client_span_id
    assert server.trace_id == handler_trace_id
    assert server.service_name == "crucible-gateway"
    assert not [span for span in spans if "healthz" in span.name]


def test_an_event_stream_is_one_server_span_that_ends_with_the_stream(
    receiver: OtlpReceiver,
) -> None:
    assert run_child(EVENT_STREAM_PROGRAM, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint) == ["3"]
    spans = receiver.wait_for(lambda s: len(s) >= 1, timeout_s=ARRIVAL_TIMEOUT_S)
    # No span per frame: the request's is the only one.
    [server] = spans
    assert (server.name, server.kind) == ("GET /jobs/{job_id}/events", "SPAN_KIND_SERVER")
    assert 200 in (
        server.attributes.get("http.status_code"),
        server.attributes.get("http.response.status_code"),
    )
    assert server.duration_s >= 0.6  # three frames 0.2 s apart: it ended after the last


def test_context_survives_the_header_round_trip() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("publish") as publish:
        headers = inject_headers({"Nats-Msg-Id": "x"})
    published = publish.get_span_context()
    assert headers["Nats-Msg-Id"] == "x"
    trace_id, span_id = format_trace_id(published.trace_id), format_span_id(published.span_id)
    assert headers["traceparent"] == f"00-{trace_id}-{span_id}-{published.trace_flags:02x}"
    with tracer.start_as_current_span("process", context=extract_context(headers)) as process:
        assert current_trace_id() == format_trace_id(published.trace_id)
    assert process.get_span_context().trace_id == published.trace_id
    assert process.parent is not None and process.parent.is_remote
    assert process.parent.span_id == published.span_id


def test_inject_copies_and_missing_headers_start_a_new_trace() -> None:
    original = {"a": "b"}
    assert inject_headers(original) == {"a": "b"}  # no active span: nothing to add
    assert inject_headers(original) is not original
    assert current_trace_id() is None
    for headers in (None, {}, {"traceparent": "garbage"}):
        context = extract_context(headers)
        assert not trace.get_current_span(context).get_span_context().is_valid


# A run's job spans (gateway.job_traces) under a batch span, next to a root span the SDK
# itself starts: per job, whether it records, its trace id, its headers' traceparent.
JOB_SPANS = 20
JOB_TRACES_PROGRAM = (
    f"JOBS = {JOB_SPANS}\n"
    + """
from opentelemetry import trace
from opentelemetry.context import Context
from gateway.job_traces import job_traces, span_headers, span_trace_id
from observability import inject_headers, setup_tracing, shutdown_tracing
setup_tracing("crucible-gateway")
tracer = trace.get_tracer("t")
with tracer.start_as_current_span("batch"):
    with job_traces("local", "r-1", [f"j-{i}" for i in range(JOBS)]) as spans:
        for span in spans:
            traceparent = span_headers(span).get("traceparent")
            print(span.is_recording(), span_trace_id(span), traceparent)
sdk_root = tracer.start_span("root", context=Context())
print("sdk", inject_headers(context=trace.set_span_in_context(sdk_root)).get("traceparent"))
sdk_root.end()
shutdown_tracing()
"""
)


def job_spans(lines: list[str]) -> tuple[list[tuple[str, str, str]], str]:
    *jobs, sdk = lines
    return [tuple(line.split()) for line in jobs], sdk.split()[1]  # type: ignore[misc]


@pytest.mark.parametrize("sampler", ["parentbased_always_on", "always_off"])
def test_unexported_job_spans_carry_the_ids_and_flags_the_sdk_would_give(
    receiver: OtlpReceiver, sampler: str
) -> None:
    jobs, sdk_traceparent = job_spans(run_child(JOB_TRACES_PROGRAM, OTEL_TRACES_SAMPLER=sampler))
    assert {recording for recording, _, _ in jobs} == {"False"}  # nothing would see them
    trace_ids = [trace_id for _, trace_id, _ in jobs]
    assert len(set(trace_ids)) == JOB_SPANS and all(len(t) == 32 and int(t, 16) for t in trace_ids)
    for _, trace_id, traceparent in jobs:
        version, in_header, span_id, flags = traceparent.split("-")
        assert (version, in_header, len(span_id)) == ("00", trace_id, 16)
        assert flags == sdk_traceparent.split("-")[3]  # the sampler's decision, as the SDK's
    sampled = int(sdk_traceparent.split("-")[3], 16) & 1
    assert sampled == (sampler != "always_off")
    assert receiver.spans() == []


def test_unexported_job_spans_are_sampled_as_roots() -> None:
    """Each job's span is the root of its trace, sampled on its own trace id, whatever the
    batch span around it decided."""
    jobs, _ = job_spans(
        run_child(
            JOB_TRACES_PROGRAM,
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0.5",
        )
    )
    bound = round(0.5 * 2**64)  # TraceIdRatioBased: sampled when the low 64 bits are below
    for _, trace_id, traceparent in jobs:
        expected = int(trace_id, 16) & (2**64 - 1) < bound
        assert bool(int(traceparent.split("-")[3], 16) & 1) == expected


def test_exported_job_spans_are_recorded(receiver: OtlpReceiver) -> None:
    jobs, _ = job_spans(
        run_child(JOB_TRACES_PROGRAM, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    )
    assert {recording for recording, _, _ in jobs} == {"True"}
    spans = receiver.wait_for(lambda s: len(s) >= JOB_SPANS + 2, timeout_s=ARRIVAL_TIMEOUT_S)
    job_trace_ids = {s.trace_id for s in spans if s.attributes.get("crucible.run_id") == "r-1"}
    assert job_trace_ids == {trace_id for _, trace_id, _ in jobs}


def test_job_spans_without_the_sdk_have_no_ids() -> None:
    jobs, _ = job_spans(run_child(JOB_TRACES_PROGRAM, OTEL_SDK_DISABLED="true"))
    assert jobs == [("False", "None", "None")] * JOB_SPANS


# The worker's spans (process, then sandbox.run inside it) under a parent from message headers
# (sampled, not sampled, none), beside the span the SDK itself starts under the same parent.
PARENT = "0af7651916cd43dd8448eb211c80319c"
CONSUMER_SPANS_PROGRAM = (
    f"""
PARENTS = ["00-{PARENT}-b7ad6b7169203331-01", "00-{PARENT}-b7ad6b7169203331-00", None]
"""
    + """
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from observability import extract_context, inject_headers, setup_tracing, shutdown_tracing
from observability.tracing import start_as_current_span
setup_tracing("crucible-worker")
tracer = trace.get_tracer("t")
for parent in PARENTS:
    context = extract_context({"traceparent": parent} if parent else {})
    sdk = tracer.start_span("sdk", context=context, kind=SpanKind.CONSUMER)
    sdk_flags = inject_headers(context=trace.set_span_in_context(sdk))["traceparent"][-2:]
    sdk.end()
    with start_as_current_span(tracer, "process", context=context, kind=SpanKind.CONSUMER) as p:
        process = inject_headers()["traceparent"]
        with start_as_current_span(tracer, "sandbox.run", attributes={"n": 1}) as run:
            print(p.is_recording(), run.is_recording(), process, inject_headers()["traceparent"],
                  sdk_flags)
shutdown_tracing()
"""
)


@pytest.mark.parametrize("sampler", ["parentbased_always_on", "traceidratio"])
def test_unexported_consumer_spans_carry_the_ids_and_flags_the_sdk_would_give(
    receiver: OtlpReceiver, sampler: str
) -> None:
    # traceidratio decides by the trace id whatever the parent says: the sampler is asked.
    lines = run_child(
        CONSUMER_SPANS_PROGRAM, OTEL_TRACES_SAMPLER=sampler, OTEL_TRACES_SAMPLER_ARG="0.5"
    )
    assert len(lines) == 3
    for line, parent in zip(lines, ("01", "00", None), strict=True):
        process_recording, run_recording, process, run, sdk_flags = line.split()
        assert (process_recording, run_recording) == ("False", "False")  # no one would see them
        _, process_trace, process_span, process_flags = process.split("-")
        _, run_trace, run_span, run_flags = run.split("-")
        assert run_trace == process_trace and len(process_trace) == 32
        assert len({process_span, run_span, "b7ad6b7169203331"}) == 3
        assert run_flags == process_flags
        if parent is not None:
            assert process_trace == PARENT  # the message's trace goes on
            assert process_flags == sdk_flags  # the sampler's decision, as the SDK's
        else:  # a new trace (the SDK's span beside it has another trace id)
            sampled = sampler == "parentbased_always_on" or _ratio_samples(process_trace, 0.5)
            assert int(process_flags, 16) == (0x02 | sampled)  # random trace id, + sampled
    assert receiver.spans() == []


def _ratio_samples(trace_id: str, ratio: float) -> bool:
    """TraceIdRatioBased: sampled when the trace id's low 64 bits are below the bound."""
    return int(trace_id, 16) & (2**64 - 1) < round(ratio * 2**64)


def test_exported_consumer_spans_are_recorded(receiver: OtlpReceiver) -> None:
    lines = run_child(CONSUMER_SPANS_PROGRAM, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    # The parent that was not sampled is followed by the default (parent-based) sampler.
    assert [line.split()[:2] for line in lines] == [["True"] * 2, ["False"] * 2, ["True"] * 2]
    spans = receiver.wait_for(lambda s: len(s) >= 6, timeout_s=ARRIVAL_TIMEOUT_S)
    runs = [s for s in spans if s.name == "sandbox.run"]
    processes = {s.span_id: s for s in spans if s.name == "process"}
    assert len(runs) == 2 and all(run.parent_span_id in processes for run in runs)
    assert PARENT in {process.trace_id for process in processes.values()}
