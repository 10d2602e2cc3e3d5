"""Faults injected under load; every job must end with exactly one result.

Each test submits a run, breaks something while it runs, and prints its counts
(`[chaos] ...`): submitted, finished, lost, duplicated, retried. Lost and duplicated are 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bus import JobSpec
from crucible.client import Client, Event
from tests.chaos.harness import TICKER, running_jobs, settle_and_count, submit_run, wait_until
from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

_JOBS = 24


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A short ack wait: a job whose worker was killed comes back within seconds.
    env = {"CRUCIBLE_STREAMS__ACK_WAIT_S": "3"}
    with running_stack(tmp_path_factory.mktemp("chaos"), workers=2, env=env) as running:
        yield running


def kill_one(stack: Stack, needle: str, signum: signal.Signals) -> int:
    pids = stack.processes(needle)
    assert pids, f"no {needle!r} process to kill"
    os.kill(pids[0], signum)
    return pids[0]


def test_worker_sigkill_mid_job(stack: Stack) -> None:
    run_id, job_ids = submit_run(stack, _JOBS)
    for _ in range(2):
        wait_until(lambda: running_jobs(stack, run_id) > 0, what="a job running")
        kill_one(stack, "crucible worker", signal.SIGKILL)
        time.sleep(1.5)
    counts = settle_and_count(stack, "worker SIGKILL mid-job (x2)", run_id, job_ids)
    assert (counts.lost, counts.duplicated) == (0, 0)
    assert counts.retried >= 1  # the kills did hit running jobs, which ran again
    assert counts.verdicts == {"accepted": _JOBS}


def test_worker_sigterm_finishes_running_jobs(stack: Stack) -> None:
    run_id, job_ids = submit_run(stack, _JOBS)
    wait_until(lambda: running_jobs(stack, run_id) > 0, what="a job running")
    kill_one(stack, "crucible worker", signal.SIGTERM)
    counts = settle_and_count(stack, "worker SIGTERM", run_id, job_ids)
    assert (counts.lost, counts.duplicated) == (0, 0)
    assert counts.verdicts == {"accepted": _JOBS}


class Watcher(threading.Thread):
    """Follows one event stream with the client, which resumes after a dropped connection."""

    def __init__(self, stack: Stack, path: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.path = stack, path
        self.events: list[Event] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Client(self.stack.url, self.stack.api_key) as client:
                kind, _, ident = self.path.partition(":")
                stream = client.events(ident) if kind == "job" else client.run_events(ident)
                self.events.extend(stream)
        except BaseException as exc:  # reported by the test
            self.error = exc


def start_watchers(stack: Stack, run_id: str, job_ids: list[str]) -> list[Watcher]:
    """The run's stream, and the streams of six of its jobs, followed from the start."""
    watchers = [Watcher(stack, f"run:{run_id}")] + [
        Watcher(stack, f"job:{job_id}") for job_id in job_ids[:: _JOBS // 6]
    ]
    for watcher in watchers:
        watcher.start()
    return watchers


def check_watchers(watchers: list[Watcher], job_ids: list[str]) -> None:
    for watcher in watchers:
        watcher.join(120)
        assert watcher.error is None, watcher.error
    # Each job stream: every event once, in order, and the whole output.
    for watcher in watchers[1:]:
        data = [e.json_data() for e in watcher.events if e.event in ("started", "stdout")]
        keys = [(d["attempt"], d["seq"]) for d in data]  # type: ignore[index, call-overload]
        assert keys == sorted(set(keys)), f"{watcher.path}: repeated or out of order"
        stdout = "".join(
            str(e.json_data()["data"])  # type: ignore[index]
            for e in watcher.events
            if e.event == "stdout"
        )
        assert stdout.endswith(TICKER["expected_stdout"]), stdout
        assert watcher.events[-1].event == "finished"
    finished = [e for e in watchers[0].events if e.event == "finished"]
    print(f"[chaos] run stream across the restart: {len(finished)} finished events", flush=True)
    assert sorted(e.json_data()["id"] for e in finished) == sorted(job_ids)  # type: ignore[index]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_gateway_restart_while_clients_stream(stack: Stack, signum: signal.Signals) -> None:
    run_id, job_ids = submit_run(stack, _JOBS)
    watchers = start_watchers(stack, run_id, job_ids)
    wait_until(lambda: running_jobs(stack, run_id) > 0, what="a job running")
    time.sleep(0.5)
    kill_one(stack, "crucible gateway", signum)
    counts = settle_and_count(stack, f"gateway {signum.name} while streaming", run_id, job_ids)
    check_watchers(watchers, job_ids)
    assert (counts.lost, counts.duplicated) == (0, 0)


def test_nats_restart_while_clients_stream(stack: Stack) -> None:
    # The jobs' streams read through the gateway's event feed (one consumer, in memory on
    # the server): it must pick up where it was once NATS is back, for every job.
    run_id, job_ids = submit_run(stack, _JOBS)
    watchers = start_watchers(stack, run_id, job_ids)
    wait_until(lambda: running_jobs(stack, run_id) > 0, what="a job running")
    time.sleep(0.5)
    kill_one(stack, "nats-server", signal.SIGKILL)
    counts = settle_and_count(stack, "nats-server SIGKILL while streaming", run_id, job_ids)
    check_watchers(watchers, job_ids)
    assert (counts.lost, counts.duplicated) == (0, 0)
    # A stream that broke off said so in a warning, not in an unhandled exception's traceback.
    assert "Exception in ASGI application" not in stack.log()


def test_nats_restart_with_jobs_queued_and_running(stack: Stack) -> None:
    run_id, job_ids = submit_run(stack, _JOBS)
    wait_until(lambda: running_jobs(stack, run_id) > 0, what="a job running")
    kill_one(stack, "nats-server", signal.SIGKILL)
    # A submission while NATS is down or coming back: the client retries its 503s.
    with Client(stack.url, stack.api_key) as client:
        late = client.submit_run([JobSpec.model_validate(TICKER)] * 2)
    counts = settle_and_count(stack, "nats-server SIGKILL", run_id, job_ids)
    late_counts = settle_and_count(
        stack, "submitted during the NATS restart", late.id, late.job_ids
    )
    assert (counts.lost, counts.duplicated) == (0, 0)
    assert (late_counts.lost, late_counts.duplicated) == (0, 0)
    assert counts.verdicts == {"accepted": _JOBS}


def gateway_rss_kib(stack: Stack) -> int:
    (pid,) = stack.processes("crucible gateway")
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def drop_after_first_line(url: str) -> None:
    """A client that connects, reads a little, and vanishes without a goodbye."""
    with httpx.stream("GET", url, timeout=10) as response:
        for _ in response.iter_lines():
            break


def test_disconnect_storm_and_stalled_clients_harm_nobody(stack: Stack) -> None:
    loud = {
        "language": "python",
        "code": "import sys\nfor i in range(2000):\n    sys.stdout.write('x' * 499 + '\\n')\n",
    }
    run_id, job_ids = submit_run(stack, _JOBS)
    noisy = httpx.post(
        f"{stack.url}/v1/jobs", json=loud, headers=stack.headers(), timeout=10
    ).json()
    rss_before = gateway_rss_kib(stack)
    steady = Watcher(stack, f"run:{run_id}")
    steady.start()
    # Stalled readers: connected to a job writing a megabyte, never reading a byte of it.
    stalled = []
    for _ in range(10):
        client = httpx.Client(timeout=None)
        stalled.append((client, client.stream("GET", noisy["events_url"]).__enter__()))

    def events_url(path: str) -> str:
        response = httpx.get(f"{stack.url}{path}", headers=stack.headers(), timeout=10)
        return str(response.json()["events_url"])

    urls = [events_url(f"/v1/jobs/{job_ids[0]}"), events_url(f"/v1/runs/{run_id}")]
    storm = [
        threading.Thread(target=drop_after_first_line, args=(urls[i % 2],)) for i in range(200)
    ]
    for index, thread in enumerate(storm):
        thread.start()
        if index % 20 == 19:
            time.sleep(0.2)
    for thread in storm:
        thread.join(60)
    counts = settle_and_count(
        stack, "200 SSE connects and drops, 10 stalled readers", run_id, job_ids
    )
    steady.join(120)
    assert steady.error is None, steady.error
    finished = [e for e in steady.events if e.event == "finished"]
    assert sorted(e.json_data()["id"] for e in finished) == sorted(job_ids)  # type: ignore[index]
    assert (counts.lost, counts.duplicated) == (0, 0)
    growth_mib = (gateway_rss_kib(stack) - rss_before) / 1024
    print(f"[chaos] gateway memory growth during the storm: {growth_mib:.1f} MiB", flush=True)
    assert growth_mib < 100
    for client, response in stalled:
        response.close()
        client.close()
