"""`crucible audit tail`: the newest audit records, then new ones as they are stored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime

from nats.js import api
from nats.js.errors import NotFoundError

from bus import NatsSettings, connect
from bus import subjects as s
from bus.audit import AuditRecord

_EMPTY_WAIT_S = 1.0  # without --follow: how long to wait when nothing matches at all


def format_record(record: AuditRecord) -> str:
    """One readable line: when, outcome, what, who, from where, which job or run, why."""
    parts = [
        record.at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        f"{record.outcome.value:8}",
        str(record.status),
        f"{record.action.value:12}",
        f"tenant={record.tenant or '-'}",
        f"key={record.key_id or '-'}",
        f"client={record.client or '-'}",
        f"{record.method} {record.path}",
    ]
    for name in ("job_id", "run_id", "jobs", "trace_id"):
        if (value := getattr(record, name)) is not None:
            parts.append(f"{name.removesuffix('_id')}={value}")
    if record.detail:
        parts.append(f"detail={record.detail!r}")
    return "  ".join(parts)


async def tail(
    nats: NatsSettings,
    tenant: str | None,
    last: int,
    since: datetime | None,
    follow: bool,
    emit: Callable[[str], None],
    as_json: bool = False,
) -> int:
    """Print records (the last `last` of the stream, or those since `since`); return how many."""
    nc = await connect(nats, service="debug", name="crucible-audit-tail")
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(s.AUDIT_STREAM)
        except NotFoundError:
            raise SystemExit("no AUDIT stream yet: has a gateway run on this NATS?") from None
        if since is not None:
            policy = api.DeliverPolicy.BY_START_TIME
            config = api.ConsumerConfig(opt_start_time=since)
        else:
            policy = api.DeliverPolicy.BY_START_SEQUENCE
            config = api.ConsumerConfig(opt_start_seq=max(1, info.state.last_seq - last + 1))
        subject = s.audit_subject(tenant) if tenant else s.AUDIT_ALL
        sub = await js.subscribe(
            subject,
            stream=s.AUDIT_STREAM,
            ordered_consumer=True,
            deliver_policy=policy,
            config=config,
        )
        shown = 0
        while True:
            try:
                msg = await sub.next_msg(timeout=None if follow else _EMPTY_WAIT_S)
            except TimeoutError:
                return shown
            record = AuditRecord.model_validate_json(msg.data)
            emit(record.model_dump_json() if as_json else format_record(record))
            shown += 1
            if not follow and msg.metadata.num_pending == 0:
                return shown  # caught up with what was stored
    finally:
        await nc.close()


def run_tail(
    nats: NatsSettings,
    tenant: str | None,
    last: int,
    since: datetime | None,
    follow: bool,
    as_json: bool,
) -> int:
    def emit(line: str) -> None:
        print(line, flush=True)

    with suppress(KeyboardInterrupt):  # Ctrl-C ends --follow
        asyncio.run(tail(nats, tenant, last, since, follow, emit, as_json))
    return 0
