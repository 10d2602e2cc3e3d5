"""JetStream layout: JOBS (work queue) and its `workers` consumer, EVENTS, AUDIT, KV buckets."""

from __future__ import annotations

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError
from pydantic import BaseModel, Field

from bus import subjects as s

_DAY_S = 24 * 3600
# The `workers` consumer's metadata key for how many attempts a job gets.
MAX_ATTEMPTS_METADATA = "crucible_max_attempts"


class StreamSettings(BaseModel):
    """Operator knobs for retention and redelivery."""

    events_max_age_s: float = Field(7 * _DAY_S, gt=0)
    # A worker that stops acking (crashed, partitioned) has its job redelivered after this;
    # workers heartbeat long jobs with in-progress acks, so it need not cover a job's run time.
    ack_wait_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    max_ack_pending: int = Field(10_000, ge=1)
    replicas: int = Field(1, ge=1, le=5)
    duplicate_window_s: float = Field(120.0, gt=0)
    # How long an Idempotency-Key keeps answering with the job it first created.
    idempotency_window_s: float = Field(24 * 3600, gt=0)
    max_msg_bytes: int = Field(8 * 1024 * 1024, gt=0)
    # A tenant's unfinished (queued or running) jobs; beyond it a submission gets 429. The
    # server enforces it, on the tenant's JOBS subject, for every gateway at once.
    max_queued_per_tenant: int = Field(100_000, ge=1)
    # All tenants together: what the JOBS stream holds before it refuses new jobs.
    max_queued_total: int = Field(1_000_000, ge=1)
    audit_max_age_s: float = Field(90 * _DAY_S, gt=0)


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another configuration (an operator changed a setting): converge on ours.
        await js.update_stream(config)


async def ensure_streams(js: JetStreamContext, settings: StreamSettings) -> None:
    """Create or update every stream, consumer and bucket Crucible needs. Idempotent."""
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=s.JOBS_STREAM,
            subjects=[s.JOBS_ALL],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            max_msgs_per_subject=settings.max_queued_per_tenant,
            max_msgs=settings.max_queued_total,
            discard=api.DiscardPolicy.NEW,
            discard_new_per_subject=True,
            num_replicas=settings.replicas,
            duplicate_window=settings.duplicate_window_s,
            max_msg_size=settings.max_msg_bytes,
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=s.EVENTS_STREAM,
            subjects=[s.EVENTS_ALL],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=settings.events_max_age_s,
            num_replicas=settings.replicas,
            duplicate_window=settings.duplicate_window_s,
            max_msg_size=settings.max_msg_bytes,
            allow_direct=True,  # job status is one direct get of the job's last event
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=s.AUDIT_STREAM,
            subjects=[s.AUDIT_ALL],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=settings.audit_max_age_s,
            num_replicas=settings.replicas,
        ),
    )
    # Job records and runs live as long as their events; cancel requests too, so that a job
    # fetched late still sees its own; Idempotency-Keys for their window.
    buckets = {
        s.JOBS_BUCKET: settings.events_max_age_s,
        s.RUNS_BUCKET: settings.events_max_age_s,
        s.CANCELS_BUCKET: settings.events_max_age_s,
        s.IDEMPOTENCY_BUCKET: settings.idempotency_window_s,
    }
    for bucket, ttl_s in buckets.items():
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=bucket,
                history=1,
                ttl=ttl_s,
                replicas=settings.replicas,
                storage=api.StorageType.FILE,
                direct=True,
            )
        )
    await js.add_consumer(
        s.JOBS_STREAM,
        api.ConsumerConfig(
            durable_name=s.WORKERS_CONSUMER,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            # Deliveries are not attempts: one that found NATS without a leader (a node lost)
            # ran nothing. Workers count the attempts that started, in the job's stored
            # events, and give up after `max_attempts`; JetStream keeps redelivering.
            max_deliver=-1,
            metadata={MAX_ATTEMPTS_METADATA: str(settings.max_attempts)},
            max_ack_pending=settings.max_ack_pending,
            filter_subject=s.JOBS_ALL,
        ),
    )
