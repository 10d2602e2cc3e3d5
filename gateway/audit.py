"""The audit log: every submission, cancel, authentication failure and rate-limit refusal.

An ASGI middleware, so that refusals made before any handler runs (a body too large, a
malformed request, a bad key) are recorded as well as accepted work. Handlers add what only
they know (the caller, the ids they created) to `request.state`; the record is stored on the
AUDIT stream once the response has gone out, so auditing adds nothing to a client's wait. A
submission answered with an event stream (which lasts as long as its job) is recorded as
the stream starts, so that it is on record while the job runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import orjson
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus import BusUnavailableError, publish_model
from bus import subjects as s
from bus.audit import AuditAction, AuditOutcome, AuditRecord
from gateway.auth import Principal
from gateway.keys_store import ApiKeysStore
from observability import current_trace_id

log = logging.getLogger(__name__)

_ID = r"[A-Za-z0-9_-]+"
_ROUTES = [
    (re.compile(r"^/v1/jobs/?$"), AuditAction.SUBMIT_JOB),
    (re.compile(r"^/v1/runs/?$"), AuditAction.SUBMIT_RUN),
    (re.compile(rf"^/v1/runs/(?P<run>{_ID})/jobs$"), AuditAction.APPEND_JOBS),
    (re.compile(rf"^/v1/jobs/(?P<job>{_ID})/cancel$"), AuditAction.CANCEL_JOB),
    (re.compile(rf"^/v1/runs/(?P<run>{_ID})/cancel$"), AuditAction.CANCEL_RUN),
]
_MAX_DETAIL_BYTES = 2048  # an error body beyond this is cut: the record stays small
_recording: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references to tasks


@dataclass
class AuditFacts:
    """What a handler learnt that the audit record should carry."""

    principal: Principal | None = None
    job_id: str | None = None
    run_id: str | None = None
    jobs: int | None = None
    rate_limited: bool = False
    unaudited: bool = False  # a refusal past the failed-authentication limit: no record


def audit_facts(request: Request) -> AuditFacts:
    """This request's facts, created on first use; handlers fill them in."""
    facts: AuditFacts | None = getattr(request.state, "audit", None)
    if facts is None:
        facts = request.state.audit = AuditFacts()
    return facts


def _action(method: str, path: str, status: int, facts: AuditFacts) -> AuditAction | None:
    if facts.unaudited:
        return None
    if status == 401:
        return AuditAction.AUTH_FAILURE
    if status == 429 and facts.rate_limited:
        return AuditAction.RATE_LIMITED
    if method != "POST":
        return None
    for pattern, action in _ROUTES:
        if pattern.match(path):
            return action
    return None


def _outcome(status: int) -> AuditOutcome:
    if status < 400:
        return AuditOutcome.ACCEPTED
    return AuditOutcome.REFUSED if status < 500 else AuditOutcome.FAILED


def _detail(body: bytes) -> str | None:
    try:
        detail = orjson.loads(body).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return body[:_MAX_DETAIL_BYTES].decode(errors="replace") or None
    text = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
    return text[:_MAX_DETAIL_BYTES]


def _key_holder(scope: Scope) -> Principal | None:
    """Whose key a request refused before authentication (e.g. body too large) carried."""
    headers = dict(scope["headers"])
    scheme, _, key = headers.get(b"authorization", b"").decode(errors="replace").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    keys: ApiKeysStore = scope["app"].state.keys
    return keys.authenticate(key.strip())


def _is_event_stream(start: Message) -> bool:
    return any(
        name == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in start.get("headers", ())
    )


class AuditMiddleware:
    """Records the audited requests of the app it wraps on the AUDIT stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        error_body = bytearray()
        trace_id = current_trace_id()
        recorded = False

        async def watch(message: Message) -> None:
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = message["status"]
                if scope["method"] == "POST" and _is_event_stream(message):
                    # On record now, not when the job's stream ends; beside the stream, which
                    # need not wait for it.
                    recorded = True
                    record = asyncio.create_task(self._record(scope, status, b"", trace_id))
                    _recording.add(record)
                    record.add_done_callback(_recording.discard)
            elif message["type"] == "http.response.body" and status >= 400:
                room = _MAX_DETAIL_BYTES * 2 - len(error_body)
                error_body.extend(message.get("body", b"")[: max(room, 0)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not recorded:
                await self._record(scope, status or 500, bytes(error_body), trace_id)

    async def _record(self, scope: Scope, status: int, body: bytes, trace_id: str | None) -> None:
        facts: AuditFacts = scope.get("state", {}).get("audit") or AuditFacts()
        action = _action(scope["method"], scope["path"], status, facts)
        if action is None:
            return
        ids = {}
        for pattern, _ in _ROUTES:
            if match := pattern.match(scope["path"]):
                ids = match.groupdict()
        client = scope.get("client")
        principal = facts.principal or _key_holder(scope)
        record = AuditRecord(
            action=action,
            outcome=_outcome(status),
            status=status,
            method=scope["method"],
            path=scope["path"],
            tenant=principal.tenant if principal else None,
            key_id=principal.key_id if principal else None,
            client=client[0] if client else None,
            job_id=facts.job_id or ids.get("job"),
            run_id=facts.run_id or ids.get("run"),
            jobs=facts.jobs,
            trace_id=trace_id,
            detail=_detail(body) if status >= 400 else None,
        )
        bus = getattr(scope["app"].state, "bus", None)
        try:
            if bus is None:
                raise BusUnavailableError("the gateway is not connected to NATS yet")
            await publish_model(bus.js, s.audit_subject(record.tenant), record)
        except BusUnavailableError as exc:
            # Not lost: the log line carries the whole record, for the log pipeline to keep.
            log.error("audit record not stored (%s): %s", exc, record.model_dump_json())
