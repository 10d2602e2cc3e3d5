"""What each service may publish and subscribe to, JetStream API subjects included.

Least privilege: a worker cannot enqueue jobs or read records; a gateway cannot forge events.
`crucible up` writes these into the nats-server authorization block.
"""

from pydantic import BaseModel

from bus import subjects as s


class Permissions(BaseModel):
    """Allowed subjects for one identity (nats-server `permissions` block)."""

    publish: list[str]
    subscribe: list[str]


_JS = "$JS.API"


def worker_permissions() -> Permissions:
    """A worker fetches and acks jobs, publishes events and heartbeats, hears cancels."""
    consumer = f"{s.JOBS_STREAM}.{s.WORKERS_CONSUMER}"
    return Permissions(
        publish=[
            s.EVENTS_ALL,
            s.WORKERS_ALL,
            f"{_JS}.INFO",
            f"{_JS}.CONSUMER.MSG.NEXT.{consumer}",
            f"{_JS}.CONSUMER.INFO.{consumer}",
            f"$JS.ACK.{consumer}.>",
            # Read (never write) cancel requests, before running a job it fetched.
            f"{_JS}.DIRECT.GET.{s.CANCELS_BUCKET_STREAM}.>",
            # Read a redelivered job's last event: a stored result means it is done already.
            f"{_JS}.DIRECT.GET.{s.EVENTS_STREAM}.>",
        ],
        subscribe=[f"{s.inbox_prefix('worker')}.>", s.CANCEL_ALL],
    )


def gateway_permissions() -> Permissions:
    """A gateway enqueues jobs, keeps job and run records, reads events, hears heartbeats."""
    return Permissions(
        publish=[
            s.JOBS_ALL,
            s.CANCEL_ALL,
            s.AUDIT_ALL,
            f"$KV.{s.JOBS_BUCKET}.>",
            f"$KV.{s.RUNS_BUCKET}.>",
            f"$KV.{s.CANCELS_BUCKET}.>",
            f"$KV.{s.IDEMPOTENCY_BUCKET}.>",
            f"{_JS}.DIRECT.GET.{s.IDEMPOTENCY_BUCKET_STREAM}.>",
            f"{_JS}.INFO",
            f"{_JS}.STREAM.INFO.*",
            f"{_JS}.STREAM.CREATE.*",
            f"{_JS}.STREAM.UPDATE.*",
            # Ephemeral (ordered) consumers for SSE replay; nats-py creates them with the
            # bare subject, newer clients with `.<name>.<filter>` after it.
            f"{_JS}.CONSUMER.CREATE.{s.EVENTS_STREAM}",
            f"{_JS}.CONSUMER.CREATE.{s.EVENTS_STREAM}.>",
            f"{_JS}.CONSUMER.DELETE.{s.EVENTS_STREAM}.>",
            f"{_JS}.CONSUMER.DURABLE.CREATE.{s.JOBS_STREAM}.{s.WORKERS_CONSUMER}",
            f"{_JS}.CONSUMER.INFO.{s.JOBS_STREAM}.{s.WORKERS_CONSUMER}",
            f"{_JS}.DIRECT.GET.{s.EVENTS_STREAM}",  # one event by its sequence
            f"{_JS}.DIRECT.GET.{s.EVENTS_STREAM}.>",
            # The leader's read, for what a replica answering a direct get may not have yet.
            f"{_JS}.STREAM.MSG.GET.{s.EVENTS_STREAM}",
            f"{_JS}.DIRECT.GET.{s.JOBS_BUCKET_STREAM}.>",
            f"{_JS}.DIRECT.GET.{s.RUNS_BUCKET_STREAM}.>",
            # A tenant's runs are listed with an ordered consumer over its run records.
            f"{_JS}.CONSUMER.CREATE.{s.RUNS_BUCKET_STREAM}",
            f"{_JS}.CONSUMER.CREATE.{s.RUNS_BUCKET_STREAM}.>",
            f"{_JS}.CONSUMER.DELETE.{s.RUNS_BUCKET_STREAM}.>",
            f"$JS.FC.{s.EVENTS_STREAM}.>",
            f"$JS.FC.{s.RUNS_BUCKET_STREAM}.>",
            f"$JS.ACK.{s.EVENTS_STREAM}.>",
        ],
        subscribe=[f"{s.inbox_prefix('gateway')}.>", s.WORKERS_ALL],
    )


# Streams an operator may replay with ephemeral consumers. JOBS is left out: it is a work
# queue, where a second consumer is refused anyway and an ack would remove a job.
_READABLE_STREAMS = (
    s.EVENTS_STREAM,
    s.AUDIT_STREAM,
    s.JOBS_BUCKET_STREAM,
    s.RUNS_BUCKET_STREAM,
    s.CANCELS_BUCKET_STREAM,
)


def debug_permissions() -> Permissions:
    """An operator's `nats` CLI and `crucible audit tail`: read everything, change nothing.

    It may create ephemeral consumers (reading a stream needs one) but never delete one, and
    may publish nothing on Crucible's own subjects.
    """
    replay = []
    for stream in _READABLE_STREAMS:
        replay += [
            f"{_JS}.CONSUMER.CREATE.{stream}",
            f"{_JS}.CONSUMER.CREATE.{stream}.>",
            f"$JS.FC.{stream}.>",
            f"$JS.ACK.{stream}.>",
        ]
    return Permissions(
        publish=[
            f"{_JS}.INFO",
            f"{_JS}.STREAM.NAMES",
            f"{_JS}.STREAM.LIST",
            f"{_JS}.STREAM.INFO.*",
            f"{_JS}.STREAM.MSG.GET.*",
            f"{_JS}.DIRECT.GET.>",
            f"{_JS}.CONSUMER.NAMES.*",
            f"{_JS}.CONSUMER.LIST.*",
            f"{_JS}.CONSUMER.INFO.*.*",
            *replay,
        ],
        # The `nats` CLI replies on `_INBOX.>`; no service uses it (each has its own prefix).
        subscribe=[f"{s.PREFIX}.>", "_INBOX.>", f"{s.inbox_prefix('debug')}.>"],
    )


SERVICE_PERMISSIONS = {
    "gateway": gateway_permissions,
    "worker": worker_permissions,
    "debug": debug_permissions,
}
