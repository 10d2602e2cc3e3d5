"""Every NATS subject, stream, consumer and bucket name Crucible uses: spelled here only.

| subject                        | stream   | from -> to                               |
|--------------------------------|----------|------------------------------------------|
| crucible.jobs.<tenant>         | JOBS     | gateway -> workers (work queue)          |
| crucible.events.<run>.<job>    | EVENTS   | workers -> gateway (SSE, job status)     |
| crucible.cancel.<job>          | -        | gateway -> workers (core NATS)           |
| crucible.workers.<worker>      | -        | workers -> gateway (heartbeats)          |
| crucible.audit.<tenant>        | AUDIT    | gateway                                  |
| $KV.jobs.<job or page>         | KV_jobs  | gateway (job records: tenant, run)       |
| $KV.runs.<tenant>.<run>[.<n>]  | KV_runs  | gateway (run records, job lists)         |

Event headers (so that a reader can count verdicts without fetching bodies): every event
carries `Crucible-Event` (its type); a `finished` event also `Crucible-Verdict`.
"""

PREFIX = "crucible"

JOBS_STREAM = "JOBS"
EVENTS_STREAM = "EVENTS"
AUDIT_STREAM = "AUDIT"
WORKERS_CONSUMER = "workers"
JOBS_BUCKET = "jobs"
JOBS_BUCKET_STREAM = f"KV_{JOBS_BUCKET}"
RUNS_BUCKET = "runs"
# Idempotency-Key -> the job it created, for the deduplication window.
IDEMPOTENCY_BUCKET = "idempotency"
IDEMPOTENCY_BUCKET_STREAM = f"KV_{IDEMPOTENCY_BUCKET}"
# A job's cancel request, kept so that a worker fetching it later still sees it.
CANCELS_BUCKET = "cancels"
CANCELS_BUCKET_STREAM = f"KV_{CANCELS_BUCKET}"
RUNS_BUCKET_STREAM = f"KV_{RUNS_BUCKET}"

EVENT_TYPE_HEADER = "Crucible-Event"
VERDICT_HEADER = "Crucible-Verdict"

JOBS_ALL = f"{PREFIX}.jobs.>"
EVENTS_ALL = f"{PREFIX}.events.>"
CANCEL_ALL = f"{PREFIX}.cancel.>"
WORKERS_ALL = f"{PREFIX}.workers.>"
AUDIT_ALL = f"{PREFIX}.audit.>"


def job_subject(tenant: str) -> str:
    """Where a tenant's jobs are enqueued: one subject per tenant, so that the server itself
    caps a tenant's queue (`max_msgs_per_subject`). The job id is in the message."""
    return f"{PREFIX}.jobs.{tenant}"


def events_subject(run_id: str, job_id: str) -> str:
    """Where every event of one job is stored, in order."""
    return f"{PREFIX}.events.{run_id}.{job_id}"


def run_events_subject(run_id: str) -> str:
    """Every event of every job of a run."""
    return f"{PREFIX}.events.{run_id}.*"


def job_record_subject(job_id: str) -> str:
    """The `jobs` bucket's subject for one job record, or a page of a run's job records, by
    the job's or page's id (KV puts are JetStream publishes)."""
    return f"$KV.{JOBS_BUCKET}.{job_id}"


def tenant_token(tenant: str) -> str:
    """A tenant name made safe for a subject token (tenants may hold dots or spaces)."""
    return tenant.encode().hex()


def run_key(tenant: str, run_id: str) -> str:
    """The `runs` bucket key of a run's record; the tenant in it scopes every lookup."""
    return f"{tenant_token(tenant)}.{run_id}"


def run_chunk_key(tenant: str, run_id: str, index: int) -> str:
    """The `runs` bucket key of one batch of a run's job ids (one per submission)."""
    return f"{run_key(tenant, run_id)}.{index}"


def tenant_runs_subject(tenant: str) -> str:
    """Every run record of one tenant (chunk keys have one token more, so do not match)."""
    return f"$KV.{RUNS_BUCKET}.{tenant_token(tenant)}.*"


# Audit records of requests that named no valid key (tenant names cannot start with `_`).
ANONYMOUS_AUDIT = "_anonymous"


def audit_subject(tenant: str | None) -> str:
    """Where the gateway records what one tenant's callers did and what was refused them.

    Tenant names are subject-safe (the keys file allows letters, digits, `-` and `_`), so the
    subject stays readable for `nats sub 'crucible.audit.>'`.
    """
    return f"{PREFIX}.audit.{tenant or ANONYMOUS_AUDIT}"


def cancel_key_subject(job_id: str) -> str:
    """The KV subject of a job's cancel request (read with a direct get)."""
    return f"$KV.{CANCELS_BUCKET}.{job_id}"


def cancel_subject(job_id: str) -> str:
    """Where a cancel request for one job is announced."""
    return f"{PREFIX}.cancel.{job_id}"


def worker_subject(worker_id: str) -> str:
    """Where a worker announces itself and its capacity."""
    return f"{PREFIX}.workers.{worker_id}"


def direct_get_subject(stream: str) -> str:
    """JetStream's direct get API of `stream`: messages by sequence or by subject, in batches,
    answered without a consumer (the stream needs `allow_direct`)."""
    return f"$JS.API.DIRECT.GET.{stream}"


def inbox_prefix(service: str) -> str:
    """A service's own reply inbox, so that no service can read another's replies."""
    return f"_INBOX_{service}"
