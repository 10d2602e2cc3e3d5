"""The contract between gateway and workers: subjects, messages, NATS and JetStream setup.

Errors::

    BusError
     └── BusUnavailableError (also ConnectionError): NATS or a stream cannot be used now
"""

from bus.connection import MAX_PAYLOAD_BYTES, Connection, NatsSettings, connect
from bus.errors import BusError, BusUnavailableError, QueueFullError, SupersededError
from bus.ids import is_valid_id, new_job_id, new_run_id, page_of, paged_job_id
from bus.messaging import decode_event, message_context, publish_model
from bus.models import (
    JOB_EVENT,
    CancelRequest,
    Case,
    CaseResult,
    Compare,
    FinishedEvent,
    JobEvent,
    JobMessage,
    JobRecord,
    JobResult,
    JobSpec,
    Limits,
    OutputEvent,
    RuntimeVersion,
    ServiceCredentials,
    StartedEvent,
    Status,
    Verdict,
    WorkerHeartbeat,
    utc_now,
)
from bus.permissions import SERVICE_PERMISSIONS, Permissions
from bus.pipeline import Outgoing, kv_purge, publish_all
from bus.requests import JetStreamRequests, Stored, StoredMessage
from bus.runs import PagedRecord, RecordPage, RunChunk, RunMember, RunRecord
from bus.streams import MAX_ATTEMPTS_METADATA, StreamSettings, ensure_streams

__all__ = [
    "JOB_EVENT",
    "MAX_ATTEMPTS_METADATA",
    "MAX_PAYLOAD_BYTES",
    "SERVICE_PERMISSIONS",
    "BusError",
    "BusUnavailableError",
    "CancelRequest",
    "Case",
    "CaseResult",
    "Compare",
    "Connection",
    "FinishedEvent",
    "JetStreamRequests",
    "JobEvent",
    "JobMessage",
    "JobRecord",
    "JobResult",
    "JobSpec",
    "Limits",
    "NatsSettings",
    "Outgoing",
    "OutputEvent",
    "PagedRecord",
    "Permissions",
    "QueueFullError",
    "RecordPage",
    "RunChunk",
    "RunMember",
    "RunRecord",
    "RuntimeVersion",
    "ServiceCredentials",
    "StartedEvent",
    "Status",
    "Stored",
    "StoredMessage",
    "StreamSettings",
    "SupersededError",
    "Verdict",
    "WorkerHeartbeat",
    "connect",
    "decode_event",
    "ensure_streams",
    "is_valid_id",
    "kv_purge",
    "message_context",
    "new_job_id",
    "new_run_id",
    "page_of",
    "paged_job_id",
    "publish_all",
    "publish_model",
    "utc_now",
]
