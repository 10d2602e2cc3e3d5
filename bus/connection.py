"""Connecting to NATS with a service's own identity and reply inbox."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import DEFAULT_FLUSH_TIMEOUT
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.errors import BusUnavailableError
from bus.models import ServiceCredentials
from bus.subjects import inbox_prefix
from observability.metrics import NATS_RECONNECTS

log = logging.getLogger(__name__)

# Large enough for a `finished` event carrying a full 1 MiB stdout plus stderr, JSON-escaped.
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
_CONNECT_TIMEOUT_S = 5.0
_RECONNECT_WAIT_S = 0.5

# nats-py annotates these two as int; they are seconds, and may be fractions.
_TIMING: dict[str, Any] = {
    "connect_timeout": _CONNECT_TIMEOUT_S,
    "reconnect_time_wait": _RECONNECT_WAIT_S,
}

ErrorCallback = Callable[[Exception], Awaitable[None]]
# Called in the read loop with a message's subject, reply subject, payload and headers; it
# must not block (it hands the message over, e.g. by completing a future).
MessageHandler = Callable[[bytes, bytes, bytes, dict[str, str] | None], None]


class NatsSettings(BaseSettings):
    """Where NATS is and who we are there (`CRUCIBLE_NATS_URL`, `CRUCIBLE_NATS_CREDS_FILE`)."""

    model_config = SettingsConfigDict(env_prefix="CRUCIBLE_NATS_")

    url: str = "nats://127.0.0.1:4222"  # comma-separated for a cluster
    creds_file: Path | None = None  # JSON written by `crucible creds`
    user: str | None = None
    password: SecretStr | None = None
    # nats-py retries the first connect forever when reconnects are unlimited: bound it, so a
    # wrong URL fails start-up with a message instead of hanging.
    connect_deadline_s: float = 30.0

    def credentials(self) -> ServiceCredentials | None:
        """The identity to connect with: the creds file wins over user/password."""
        if self.creds_file is not None:
            creds = ServiceCredentials.model_validate_json(self.creds_file.read_text())
            return creds.relative_to(self.creds_file.parent)
        if self.user and self.password:
            return ServiceCredentials(user=self.user, password=self.password.get_secret_value())
        return None


def _identity(creds: ServiceCredentials | None) -> dict[str, Any]:
    """nats-py's connect arguments for one identity."""
    if creds is None:
        return {}
    if creds.nkey_seed is not None:
        return {"nkeys_seed_str": creds.nkey_seed}
    if creds.tls_cert is not None and creds.tls_key is not None:
        context = ssl.create_default_context(cafile=creds.tls_ca)
        context.load_cert_chain(creds.tls_cert, creds.tls_key)
        return {"tls": context}
    return {"user": creds.user, "password": creds.password}


class Connection(NATS):
    """nats-py's client, with a flush that covers every command queued before it, and
    subscriptions whose messages are handed over in the read loop (`subscribe_direct`)."""

    def __init__(self) -> None:
        super().__init__()
        self._handlers: dict[int, MessageHandler] = {}  # subscription id -> its handler

    async def flush(self, timeout: int = DEFAULT_FLUSH_TIMEOUT) -> None:  # noqa: ASYNC109 - its signature
        # nats-py 2.16 writes flush's PING straight to the socket, ahead of the commands still
        # queued for its flusher task, so the PONG could come back before a SUB or PUB made
        # just before the flush had reached the server (nats-server's trace showed every such
        # SUB arriving after the PING; a publish from another connection then found no
        # subscriber, 1 in 20 under load). Hand the queue to the socket first.
        if not self.is_closed:  # closed: nats-py's own flush says so
            await self._flush_pending(force_flush=True)
        await super().flush(timeout)

    async def subscribe_direct(self, subject: str, handler: MessageHandler) -> Subscription:
        """Subscribe to `subject`, `handler` getting each message in the read loop itself.

        nats-py puts each message of a subscription on a queue that a task of the
        subscription's reads and then calls back: per reply to a request, an asyncio queue and
        two task wake-ups (~15 us of the worker's Python). A reply handed over here wakes only
        its waiter. Reconnects resubscribe it like any other subscription.
        """
        subscription = await self.subscribe(subject)  # no callback: nats-py starts no task
        self._handlers[subscription._id] = handler
        return subscription

    async def unsubscribe_direct(self, subscription: Subscription) -> None:
        """End a `subscribe_direct` subscription."""
        self._handlers.pop(subscription._id, None)
        await subscription.unsubscribe()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        # nats-py 2.16's parser calls this for every MSG/HMSG; it is pinned below 2.17.
        handler = self._handlers.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        parsed = await self._process_headers(headers)
        try:
            handler(subject, reply, data, parsed)
        except Exception as exc:  # an exception here would end nats-py's read loop
            await self._error_cb(exc)


async def _log_error(exc: Exception) -> None:
    log.warning("nats error: %s", exc)


async def _reconnected() -> None:
    NATS_RECONNECTS.inc()
    log.info("reconnected to NATS")


async def connect(
    settings: NatsSettings,
    service: str,
    name: str,
    error_cb: ErrorCallback | None = None,
) -> Connection:
    """Connect as `service` (gateway, worker, debug); keep reconnecting forever once connected."""
    client = Connection()
    try:
        async with asyncio.timeout(settings.connect_deadline_s):
            await client.connect(
                servers=settings.url.split(","),
                name=name,
                inbox_prefix=inbox_prefix(service),
                **_TIMING,
                max_reconnect_attempts=-1,
                error_cb=error_cb or _log_error,
                reconnected_cb=_reconnected,
                **_identity(settings.credentials()),
            )
        return client
    except Exception as exc:  # nats-py raises several unrelated types here
        raise BusUnavailableError(
            f"cannot connect to NATS at {settings.url} as {service}: {exc!r}"
        ) from exc
