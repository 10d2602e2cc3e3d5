"""One trace per job: gateway and worker spans joined through NATS headers, exported over OTLP."""

from __future__ import annotations

from tests.otlp_receiver import OtlpReceiver
from tests.sse_client import run_job
from tests.stack import Stack


def test_one_trace_spans_gateway_worker_and_sandbox(stack: Stack, otlp: OtlpReceiver) -> None:
    finished = run_job(stack, {"language": "python", "code": "print('traced')"})
    trace_id = finished["trace_id"]
    assert trace_id and len(trace_id) == 32

    wanted = {"publish JOBS", "process JOBS", "sandbox.run", "sse deliver finished"}

    def complete(spans: list) -> bool:  # type: ignore[type-arg]
        return wanted <= {span.name for span in spans if span.trace_id == trace_id}

    spans = [span for span in otlp.wait_for(complete, timeout_s=30) if span.trace_id == trace_id]
    by_name = {span.name: span for span in spans}
    services = {span.service_name for span in spans}
    assert {"crucible-gateway", "crucible-worker"} <= services
    assert by_name["publish JOBS"].kind == "SPAN_KIND_PRODUCER"
    assert by_name["process JOBS"].kind == "SPAN_KIND_CONSUMER"
    # The worker's span hangs off the gateway's publish: context crossed NATS in headers.
    assert by_name["process JOBS"].parent_span_id == by_name["publish JOBS"].span_id
    assert by_name["sandbox.run"].parent_span_id == by_name["process JOBS"].span_id
    assert by_name["sandbox.run"].attributes["crucible.verdict"] == "accepted"
    server = [
        s for s in spans if s.kind == "SPAN_KIND_SERVER" and s.service_name == "crucible-gateway"
    ]
    assert server, "the POST /v1/jobs server span is part of the job's trace"
