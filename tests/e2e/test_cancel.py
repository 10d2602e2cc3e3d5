"""Cancelling: a running job is killed, queued ones never start, a whole run at once."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from bus import connect
from bus import subjects as s
from tests.sse_client import stream, submit
from tests.stack import Stack

SLEEPER = {
    "language": "python",
    "code": "import time\nprint('up', flush=True)\ntime.sleep(50)",
    "limits": {"wall_time_s": 60, "cpu_time_s": 60},
}


def test_a_running_job_is_killed_and_finishes_cancelled(stack: Stack) -> None:
    accepted = submit(stack, SLEEPER)
    seen = stream(accepted["events_url"], stop_after=3)  # queued, started, stdout 'up'
    assert [e.event for e in seen] == ["queued", "started", "stdout"]
    started = time.monotonic()
    response = httpx.post(f"{accepted['url']}/cancel", headers=stack.headers())
    assert response.status_code == 202, response.text
    rest = stream(accepted["events_url"], last_event_id=seen[-1].id)
    assert rest[-1].event == "finished"
    assert rest[-1].data["verdict"] == "cancelled"
    assert rest[-1].data["reason"] == "cancelled while running"
    assert time.monotonic() - started < 30  # killed, not waited out (the job sleeps 50 s)
    again = httpx.post(f"{accepted['url']}/cancel", headers=stack.headers())
    assert again.status_code == 409 and "already finished" in again.json()["detail"]


def test_cancelling_a_run_stops_running_and_queued_jobs(stack: Stack) -> None:
    # Four sleepers on two single-slot workers: two run, two wait in the queue.
    created = httpx.post(
        f"{stack.url}/v1/runs", headers=stack.headers(), json={"jobs": [SLEEPER] * 4}
    )
    assert created.status_code == 202, created.text
    run = created.json()
    first = httpx.get(f"{stack.url}/v1/jobs/{run['job_ids'][0]}", headers=stack.headers())
    deadline = time.monotonic() + 30
    while first.json()["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
        first = httpx.get(f"{stack.url}/v1/jobs/{run['job_ids'][0]}", headers=stack.headers())
    cancel = httpx.post(f"{run['url']}/cancel", headers=stack.headers())
    assert cancel.status_code == 202 and cancel.json()["jobs"] == 4
    deadline = time.monotonic() + 40
    view = httpx.get(run["url"], headers=stack.headers()).json()
    while view["status"] != "finished" and time.monotonic() < deadline:
        time.sleep(0.2)
        view = httpx.get(run["url"], headers=stack.headers()).json()
    assert view["status"] == "finished", view
    assert view["verdicts"] == {"cancelled": 4}
    reasons = {
        httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=stack.headers()).json()["reason"]
        for job_id in run["job_ids"]
    }
    assert reasons == {"cancelled while running", "cancelled before it started"}


def test_another_tenants_job_cannot_be_cancelled(stack: Stack) -> None:
    missing = httpx.post(f"{stack.url}/v1/jobs/j-{'0' * 32}/cancel", headers=stack.headers())
    assert missing.status_code == 404
    unauthenticated = httpx.post(f"{stack.url}/v1/jobs/j-{'0' * 32}/cancel")
    assert unauthenticated.status_code == 401


def test_a_stored_message_redirected_onto_a_cancel_subject_cancels_nothing(stack: Stack) -> None:
    # The `debug` identity may make consumers, and nats-server does not check where a push
    # consumer delivers: one can replay the job's own stored events onto its cancel subject,
    # where workers listen. A cancel must be a cancel request, not whatever names the job.
    code = "import time\nprint('up', flush=True)\ntime.sleep(3)"
    accepted = submit(stack, {**SLEEPER, "code": code})
    seen = stream(accepted["events_url"], stop_after=3)
    assert [e.event for e in seen] == ["queued", "started", "stdout"]
    job_id, run_id = seen[0].data["job_id"], accepted["run_id"]
    asyncio.run(_redirect(stack, run_id, job_id, s.cancel_subject(job_id)))
    rest = stream(accepted["events_url"], last_event_id=seen[-1].id)
    assert rest[-1].event == "finished"
    assert rest[-1].data["verdict"] == "accepted", rest[-1].data


async def _redirect(stack: Stack, run_id: str, job_id: str, target: str) -> None:
    """As `debug`: a consumer that delivers the job's stored events to `target`."""
    nc = await connect(stack.nats("debug"), "debug", "redirect")
    try:
        await nc.subscribe(target)  # interest: a push consumer delivers only where there is some
        config = {
            "deliver_subject": target,
            "deliver_policy": "all",
            "ack_policy": "none",
            "filter_subject": s.events_subject(run_id, job_id),
        }
        reply = await nc.request(
            f"$JS.API.CONSUMER.CREATE.{s.EVENTS_STREAM}",
            json.dumps({"stream_name": s.EVENTS_STREAM, "config": config}).encode(),
            timeout=5,
        )
        assert b"error" not in reply.data, reply.data  # the redirect itself is allowed
        await asyncio.sleep(0.5)  # delivered by now
    finally:
        await nc.close()
