"""Publishing and reading bus models, with W3C trace context in the message headers."""

from __future__ import annotations

from collections.abc import Mapping

from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from opentelemetry.context import Context
from pydantic import BaseModel

from bus.errors import (
    BusUnavailableError,
    QueueFullError,
    SupersededError,
    is_queue_full,
    is_superseded,
)
from bus.models import JOB_EVENT, JobEvent
from observability.propagation import extract_context, inject_headers

_PUBLISH_TIMEOUT_S = 5.0


async def publish_model(
    js: JetStreamContext,
    subject: str,
    model: BaseModel,
    msg_id: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    after_seq: int | None = None,
) -> api.PubAck:
    """Store `model` as JSON on `subject`; `msg_id` lets JetStream drop a re-publish.

    With `after_seq`, the store happens only if the subject's newest message is still at
    that stream sequence (0: the subject is empty); otherwise SupersededError.
    """
    headers = inject_headers(dict(extra_headers or {}))
    if msg_id is not None:
        headers["Nats-Msg-Id"] = msg_id
    if after_seq is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(after_seq)
    try:
        return await js.publish(
            subject, model.model_dump_json().encode(), headers=headers, timeout=_PUBLISH_TIMEOUT_S
        )
    except (TimeoutError, NatsError) as exc:
        if is_superseded(exc):
            raise SupersededError(f"{subject} moved past sequence {after_seq}") from exc
        if is_queue_full(exc):
            reason = getattr(exc, "description", None) or "full"
            raise QueueFullError(f"{subject}: {reason}") from exc
        raise BusUnavailableError(f"could not store a message on {subject}: {exc!r}") from exc


def decode_event(data: bytes) -> JobEvent:
    """Parse one event from the EVENTS stream."""
    return JOB_EVENT.validate_json(data)


def message_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context the publisher put in a message's headers."""
    return extract_context(headers)
