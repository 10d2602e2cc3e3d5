"""A worker's Prometheus metrics, served on `CRUCIBLE_WORKER_METRICS_PORT` at /metrics."""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from bus import JobMessage, JobResult
from observability.metrics import QUEUE_BUCKETS, SECONDS_BUCKETS

JOBS_FINISHED = Counter(
    "crucible_jobs_finished",
    "Jobs this worker finished, by verdict and runtime.",
    ["verdict", "runtime"],
)
TIME_IN_QUEUE = Histogram(
    "crucible_job_queue_seconds",
    "From submission to the start of the attempt that ran the job.",
    buckets=QUEUE_BUCKETS,
)
SANDBOX_OVERHEAD = Histogram(
    "crucible_sandbox_overhead_seconds",
    "Time in a sandbox run not spent in the program: starting the sandbox and tearing it down.",
    ["backend"],
    buckets=SECONDS_BUCKETS,
)
RUN_TIME = Histogram(
    "crucible_job_run_seconds",
    "Wall time of a job's program (all its test cases), by runtime.",
    ["runtime"],
    buckets=SECONDS_BUCKETS,
)
SLOTS = Gauge("crucible_worker_slots", "Jobs this worker runs at once.")
SLOTS_BUSY = Gauge("crucible_worker_slots_busy", "Slots running a job now.")


def serve(port: int, host: str) -> None:
    """Serve /metrics from a background thread (the worker's event loop is not involved)."""
    start_http_server(port, addr=host)


# A labelled child is found by validating and joining its labels under the metric's lock on
# every `labels()` call; there are few of them (verdicts x runtimes, backends), each is kept.
@cache
def _finished(verdict: str, runtime: str) -> Counter:
    return JOBS_FINISHED.labels(verdict, runtime)


@cache
def _run_time(runtime: str) -> Histogram:
    return RUN_TIME.labels(runtime)


@cache
def sandbox_overhead(backend: str) -> Histogram:
    """The SANDBOX_OVERHEAD histogram of one backend."""
    return SANDBOX_OVERHEAD.labels(backend)


def record_finished(job: JobMessage, result: JobResult) -> None:
    _finished(result.verdict.value, job.spec.language).inc()
    _run_time(job.spec.language).observe(result.wall_time_s)
    if result.started_at is not None:
        waited = (result.started_at - job.submitted_at).total_seconds()
        TIME_IN_QUEUE.observe(max(waited, 0.0))
