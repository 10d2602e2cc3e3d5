"""Cancelling: a running job is killed, queued ones never start, a whole run at once."""

from __future__ import annotations

import time

import httpx

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
