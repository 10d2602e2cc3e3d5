"""One trace per job: gateway and worker spans joined through NATS headers, exported over OTLP."""

from __future__ import annotations

import httpx

from crucible.client import Client
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
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
    assert by_name["sandbox.run"].events == ["first output byte"]
    assert "dequeued" in by_name["process JOBS"].events
    for attribute in ("crucible.sandbox.backend", "crucible.exit_code", "crucible.memory_peak_mb"):
        assert attribute in by_name["sandbox.run"].attributes
    server = [
        s for s in spans if s.kind == "SPAN_KIND_SERVER" and s.service_name == "crucible-gateway"
    ]
    assert server, "the POST /v1/jobs server span is part of the job's trace"


def test_a_runs_jobs_each_have_a_trace_linked_to_the_runs_publish(
    stack: Stack, otlp: OtlpReceiver
) -> None:
    jobs = 50
    response = httpx.post(
        f"{stack.url}/v1/runs",
        json={"jobs": [{"language": "python", "code": "print(1)"}] * jobs},
        headers=stack.headers(),
    )
    assert response.status_code == 202
    run = response.json()
    with Client(stack.url, stack.api_key) as client:
        client.wait_run(run["id"])
        job_traces = {view.id: view.trace_id for view in client.results(run["id"])}
    assert len(set(job_traces.values())) == jobs  # one trace per job

    def complete(spans: list[ReceivedSpan]) -> bool:
        processed = {s.trace_id for s in spans if s.name == "process JOBS"}
        return set(job_traces.values()) <= processed

    spans = otlp.wait_for(complete, timeout_s=60)
    batch = [
        s
        for s in spans
        if s.name == "publish JOBS"
        and s.attributes.get("crucible.run_id") == run["id"]
        and s.attributes.get("messaging.batch.message_count") == jobs
    ]
    assert len(batch) == 1, "one batch publish span for the run"
    for job_id, trace_id in job_traces.items():
        in_trace = [s for s in spans if s.trace_id == trace_id]
        (root,) = [s for s in in_trace if not s.parent_span_id]
        assert root.name == "publish JOBS" and root.kind == "SPAN_KIND_PRODUCER"
        assert root.attributes["messaging.message.id"] == job_id
        assert root.links == [(batch[0].trace_id, batch[0].span_id)]
        (process,) = [s for s in in_trace if s.name == "process JOBS"]
        assert process.parent_span_id == root.span_id
        # No orphans: every span's parent is in the job's trace.
        ids = {s.span_id for s in in_trace}
        assert all(s.parent_span_id in ids for s in in_trace if s.parent_span_id)


def test_a_stream_tokens_secret_reaches_no_span(stack: Stack, otlp: OtlpReceiver) -> None:
    """Whoever reads the traces (Jaeger) or the logs must not be able to open the stream."""
    posted = httpx.post(
        f"{stack.url}/v1/jobs",
        json={"language": "python", "code": "print(1)"},
        headers=stack.headers(),
    )
    assert posted.status_code == 202
    events_url = posted.json()["events_url"]
    token = events_url.partition("?token=")[2]
    signature = token.rpartition(".")[2]
    with httpx.stream("GET", events_url, timeout=30) as opened:  # the browser's way in
        assert opened.status_code == 200
        for line in opened.iter_lines():
            if line == "event: finished":
                break

    path = httpx.URL(events_url).path

    def ours(span: ReceivedSpan) -> bool:
        return span.kind == "SPAN_KIND_SERVER" and path in str(span.attributes)

    # Still traced (its URL without the token's value): wait for that span to be exported.
    spans = otlp.wait_for(lambda spans: any(ours(s) for s in spans))
    leaked = [s for s in spans if signature in str(s.attributes)]
    assert not leaked, leaked
    # Nor in the logs: uvicorn's access line for the request shows REDACTED in its place.
    log = stack.log()
    assert signature not in log
    assert f"{path}?token=REDACTED" in log
