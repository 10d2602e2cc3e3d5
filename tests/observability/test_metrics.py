"""Prometheus /metrics on the gateway and on each worker move with real jobs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.sse_client import run_job, submit
from tests.stack import Stack


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= set(lbls))


def worker_urls(stack: Stack) -> list[str]:
    urls = []
    for pid in stack.processes("crucible worker"):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        port = next(
            e.split(b"=")[1] for e in environ if e.startswith(b"CRUCIBLE_WORKER_METRICS_PORT=")
        )
        urls.append(f"http://127.0.0.1:{port.decode()}/metrics")
    assert urls, "no worker processes"
    return urls


def workers_total(stack: Stack, name: str, **labels: str) -> float:
    return sum(total(scrape(url), name, **labels) for url in worker_urls(stack))


def test_counters_move_with_a_real_job(stack: Stack) -> None:
    gateway = f"{stack.url}/metrics"
    submitted = total(scrape(gateway), "crucible_jobs_submitted_total", via="job")
    finished = workers_total(
        stack, "crucible_jobs_finished_total", verdict="accepted", runtime="python"
    )
    queued = workers_total(stack, "crucible_job_queue_seconds_count")
    ran = workers_total(stack, "crucible_job_run_seconds_count", runtime="python")
    assert (
        run_job(stack, {"language": "python", "code": "print('metered')"})["verdict"] == "accepted"
    )
    assert total(scrape(gateway), "crucible_jobs_submitted_total", via="job") == submitted + 1
    # At least: jobs of earlier tests (cancelled runs) may finish meanwhile.
    assert (
        workers_total(stack, "crucible_jobs_finished_total", verdict="accepted", runtime="python")
        >= finished + 1
    )
    assert workers_total(stack, "crucible_job_queue_seconds_count") >= queued + 1
    assert workers_total(stack, "crucible_job_run_seconds_count", runtime="python") >= ran + 1
    assert workers_total(stack, "crucible_sandbox_overhead_seconds_count") > 0
    assert workers_total(stack, "crucible_worker_slots") >= 1


def test_the_gateway_reports_workers_queue_and_open_streams(stack: Stack) -> None:
    gateway = f"{stack.url}/metrics"
    deadline = time.monotonic() + 10
    while total(scrape(gateway), "crucible_workers") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)  # the queue gauges refresh every two seconds
    samples = scrape(gateway)
    assert total(samples, "crucible_workers") >= 1
    assert total(samples, "crucible_worker_slots_total") >= 1
    for name in ("crucible_queue_jobs", "crucible_queue_waiting", "crucible_queue_running"):
        assert (name, ()) in samples
    # A stream held open counts as a connected client until it closes.
    accepted = submit(stack, {"language": "python", "code": "import time; time.sleep(3)"})
    opened = threading.Event()

    def hold() -> None:
        with httpx.stream("GET", accepted["events_url"], timeout=30) as response:
            for _ in response.iter_lines():
                opened.set()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert opened.wait(10)
    assert total(scrape(gateway), "crucible_sse_clients", stream="job") >= 1
    holder.join(30)
    assert total(scrape(gateway), "crucible_sse_clients", stream="job") == 0
