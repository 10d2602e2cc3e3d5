"""Every NATS subject, stream, consumer and bucket name Crucible uses: spelled here only.

| subject                        | stream   | from -> to                               |
|--------------------------------|----------|------------------------------------------|
| crucible.jobs.<job>            | JOBS     | gateway -> workers (work queue)          |
| crucible.events.<run>.<job>    | EVENTS   | workers -> gateway (SSE, job status)     |
| crucible.cancel.<job>          | -        | gateway -> workers (core NATS)           |
| crucible.workers.<worker>      | -        | workers -> gateway (heartbeats)          |
| crucible.audit.<tenant>        | AUDIT    | gateway                                  |
| $KV.jobs.<job>                 | KV_jobs  | gateway (job records: tenant, run)       |
"""

PREFIX = "crucible"

JOBS_STREAM = "JOBS"
EVENTS_STREAM = "EVENTS"
WORKERS_CONSUMER = "workers"
JOBS_BUCKET = "jobs"
JOBS_BUCKET_STREAM = f"KV_{JOBS_BUCKET}"

JOBS_ALL = f"{PREFIX}.jobs.>"
EVENTS_ALL = f"{PREFIX}.events.>"
CANCEL_ALL = f"{PREFIX}.cancel.>"
WORKERS_ALL = f"{PREFIX}.workers.>"
AUDIT_ALL = f"{PREFIX}.audit.>"


def job_subject(job_id: str) -> str:
    """Where a job is enqueued."""
    return f"{PREFIX}.jobs.{job_id}"


def events_subject(run_id: str, job_id: str) -> str:
    """Where every event of one job is stored, in order."""
    return f"{PREFIX}.events.{run_id}.{job_id}"


def run_events_subject(run_id: str) -> str:
    """Every event of every job of a run."""
    return f"{PREFIX}.events.{run_id}.*"


def cancel_subject(job_id: str) -> str:
    """Where a cancel request for one job is announced."""
    return f"{PREFIX}.cancel.{job_id}"


def worker_subject(worker_id: str) -> str:
    """Where a worker announces itself and its capacity."""
    return f"{PREFIX}.workers.{worker_id}"


def inbox_prefix(service: str) -> str:
    """A service's own reply inbox, so that no service can read another's replies."""
    return f"_INBOX_{service}"
