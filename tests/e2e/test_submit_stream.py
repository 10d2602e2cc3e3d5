"""`POST /v1/jobs` with `Accept: text/event-stream` (real stack): the answer is the job's own
event stream, the same events as its `events_url` gives, resumable there; without that
header the answer is the usual 202, and bad input is refused as it always is."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from httpx_sse import connect_sse

from bus.audit import AuditAction
from tests.bus_state import audit_records
from tests.sse_client import Event, stream
from tests.stack import Stack

TICKS = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.2)\n"
_STREAM = {"Accept": "text/event-stream"}
_SETTLE_S = 10.0


def submit_streamed(
    stack: Stack, spec: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[httpx.Headers, list[Event]]:
    """POST the job asking for its stream; the answer's headers and events."""
    sent = stack.headers() | _STREAM | (headers or {})
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "POST", f"{stack.url}/v1/jobs", json=spec, headers=sent) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        events = [Event(e.id, e.event, json.loads(e.data)) for e in source.iter_sse()]
        return source.response.headers, events


def test_a_submission_can_be_answered_with_its_event_stream(stack: Stack) -> None:
    headers, events = submit_streamed(stack, {"language": "python", "code": TICKS})
    assert headers["content-type"].startswith("text/event-stream")
    kinds = [e.event for e in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "finished"
    assert "".join(e.data["data"] for e in events if e.event == "stdout") == "".join(
        f"tick {i}\n" for i in range(3)
    )
    job_id = events[0].data["job_id"]
    assert headers["location"] == f"{stack.url}/v1/jobs/{job_id}"
    assert events[-1].data["id"] == job_id and events[-1].data["verdict"] == "accepted"
    # The same events as the job's own stream gives, id for id, and it resumes from any.
    events_url = headers["crucible-events-url"]
    assert stream(events_url) == events
    assert stream(events_url, last_event_id=events[2].id) == events[3:]
    job = httpx.get(headers["location"], headers=stack.headers(), timeout=30).json()
    assert job["status"] == "finished"
    # On record as a submission, as a 202 would be.
    submitted = [r for r in asyncio.run(audit_records(stack)) if r.job_id == job_id]
    assert [(r.action, r.status) for r in submitted] == [(AuditAction.SUBMIT_JOB, 200)]


def test_a_streamed_submission_is_on_record_while_its_job_runs(stack: Stack) -> None:
    sleeper = {
        "language": "python",
        "code": "import time; time.sleep(50)",
        "limits": {"wall_time_s": 60},
    }
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client, "POST", f"{stack.url}/v1/jobs", json=sleeper, headers=stack.headers() | _STREAM
        ) as source,
    ):
        events = source.iter_sse()
        job_id = json.loads(next(events).data)["job_id"]
        deadline = time.monotonic() + _SETTLE_S
        while not [
            r
            for r in asyncio.run(audit_records(stack))
            if (r.job_id, r.action) == (job_id, AuditAction.SUBMIT_JOB)
        ]:
            assert time.monotonic() < deadline, "not on record while its stream is open"
            time.sleep(0.1)
        cancel = httpx.post(f"{stack.url}/v1/jobs/{job_id}/cancel", headers=stack.headers())
        assert cancel.status_code == 202
        assert [e.event for e in events][-1] == "finished"


def test_without_it_a_submission_is_answered_as_always(stack: Stack) -> None:
    spec = {"language": "python", "code": "print(1)"}
    for accept in ({}, {"Accept": "application/json"}, {"Accept": "text/event-stream;q=0"}):
        response = httpx.post(
            f"{stack.url}/v1/jobs", json=spec, headers=stack.headers() | accept, timeout=30
        )
        assert response.status_code == 202, (accept, response.text)
        assert set(response.json()) == {"id", "run_id", "status", "url", "events_url"}


def test_bad_input_asking_for_a_stream_is_refused_as_json(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.url}/v1/jobs",
        json={"language": "cobol", "code": "print(1)"},
        headers=stack.headers() | _STREAM,
        timeout=30,
    )
    assert response.status_code == 422
    assert "unknown language" in response.json()["detail"]


def test_a_repeated_idempotency_key_streams_the_first_job(stack: Stack) -> None:
    spec = {"language": "python", "code": "print(2)"}
    key = {"Idempotency-Key": "stream-twice"}
    first = httpx.post(
        f"{stack.url}/v1/jobs", json=spec, headers=stack.headers() | key, timeout=30
    ).json()
    headers, events = submit_streamed(stack, spec, key)
    assert headers["location"] == first["url"]
    assert events[0].data["job_id"] == first["id"]
    assert events[-1].event == "finished" and events[-1].data["stdout"] == "2\n"
