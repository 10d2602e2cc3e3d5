"""A job posted as usual and then followed at its `events_url` (real stack): when the
gateway's event feed is reading as the job is posted, the job's stream reads nothing back
from JetStream (the gateway watched the job before enqueuing it), and gets every event."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.sse_client import run_job, stream, submit
from tests.stack import Stack


def stored_reads(stack: Stack) -> float:
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "crucible_sse_stored_reads_total"
    )


def test_a_stream_opened_after_its_submission_reads_nothing_back(stack: Stack) -> None:
    spec = {"language": "python", "code": "print('a')\nprint('b', flush=True)\nprint('c')"}
    run_job(stack, spec)  # a job's stream: the feed reads, and lingers after it
    before = stored_reads(stack)
    for _ in range(3):
        accepted = submit(stack, spec)
        events = stream(accepted["events_url"])
        assert (events[0].event, events[-1].event) == ("queued", "finished")
        assert "".join(e.data["data"] for e in events if e.event == "stdout") == "a\nb\nc\n"
        ids = [int(e.id) for e in events]
        assert ids == sorted(set(ids))
    assert stored_reads(stack) == before
