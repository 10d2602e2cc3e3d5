"""What `Client` and `AsyncClient` share: configuration, errors, events, batching, resume."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import ServerSentEvent
from pydantic import BaseModel, JsonValue

from bus import JobSpec
from gateway.run_schemas import MAX_JOBS_PER_REQUEST, RunAccepted, RunProgress
from gateway.schemas import JobView

_DEFAULT_URL = "http://127.0.0.1:8080"
# Longer than the gateway's 15 s keep-alive pings: a silent minute means a dead connection.
_STREAM_READ_TIMEOUT_S = 60.0
_MAX_RECONNECTS = 10
_MAX_BACKOFF_S = 5.0
_RETRY_BUDGET_S = 300.0
# Answers that promise nothing was stored: the same request may simply be sent again.
_RETRYABLE = {429, 503}
_DEFAULT_RETRY_AFTER_S = 1.0
# Well under the gateway's default 64 MiB for a run body; larger runs go in several requests.
_MAX_BATCH_BYTES = 16 * 1024 * 1024


class CrucibleError(Exception):
    """Base of the client's errors; also raised when the gateway cannot be reached."""


class ApiError(CrucibleError):
    """The gateway answered with an error status."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class StreamError(CrucibleError):
    """An event stream kept failing; `last_event_id` is where to resume by hand."""

    def __init__(self, message: str, last_event_id: str | None) -> None:
        super().__init__(message)
        self.last_event_id = last_event_id


class ClientConfig(BaseModel):
    url: str
    api_key: str
    timeout_s: float
    max_reconnects: int = _MAX_RECONNECTS
    max_batch_bytes: int = _MAX_BATCH_BYTES
    # How long, in all, one call may wait on 429 and 503 answers before giving up.
    retry_budget_s: float = _RETRY_BUDGET_S

    @classmethod
    def create(cls, url: str | None, api_key: str | None, timeout_s: float) -> ClientConfig:
        key = api_key or os.environ.get("CRUCIBLE_API_KEY")
        if not key:
            raise CrucibleError("no API key: pass api_key= or set CRUCIBLE_API_KEY")
        base = url or os.environ.get("CRUCIBLE_URL") or _DEFAULT_URL
        return cls(url=base.rstrip("/"), api_key=key, timeout_s=timeout_s)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """TLS verification as httpx takes it: the default (its CA bundle) for an https
        gateway. A plain-http one gets a context that trusts no certificate instead: loading
        the bundle costs 30-80 ms per client, every CLI command's start, for connections that
        never use TLS (requests go to paths under the URL and redirects are not followed),
        and should one ever use it, it fails verification rather than goes unchecked."""
        if urlsplit(self.url).scheme.lower() == "https":
            return True
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, read=max(self.timeout_s, _STREAM_READ_TIMEOUT_S))


class Event(BaseModel):
    """One server-sent event; `data` is its JSON text, read it typed with the methods."""

    id: str
    event: str
    data: str

    def json_data(self) -> JsonValue:
        value: JsonValue = json.loads(self.data)
        return value

    def job(self) -> JobView:
        """The job of a `finished` event."""
        return JobView.model_validate_json(self.data)

    def progress(self) -> RunProgress:
        """The counts of a run's `progress` event."""
        return RunProgress.model_validate_json(self.data)


def is_job_end(event: Event) -> bool:
    return event.event == "finished"


def is_run_end(event: Event) -> bool:
    if event.event != "progress":
        return False
    progress = event.progress()
    return progress.done >= progress.total


def retry_delay(response: httpx.Response, waited_s: float, budget_s: float) -> float | None:
    """How long to wait before sending a refused request again (its `Retry-After`), or None
    when it is not worth retrying: another error, or the budget would be exceeded."""
    if response.status_code not in _RETRYABLE:
        return None
    header = response.headers.get("retry-after", "")
    delay = float(header) if header.isdigit() else _DEFAULT_RETRY_AFTER_S
    return delay if waited_s + delay <= budget_s else None


def check(response: httpx.Response) -> httpx.Response:
    """The response, or ApiError with the gateway's `detail` (read the body first)."""
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise ApiError(response.status_code, detail if isinstance(detail, str) else json.dumps(detail))


class StreamResume:
    """Where a stream got to, and how long to wait before reconnecting after a failure."""

    def __init__(self, path: str, last_event_id: str | None, max_reconnects: int) -> None:
        self._path = path
        self.last_event_id = last_event_id
        self._max_reconnects = max_reconnects
        self._failures = 0

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def seen(self, sse: ServerSentEvent) -> Event:
        self._failures = 0  # progress was made: a later drop starts a fresh retry budget
        if sse.id:
            self.last_event_id = sse.id
        return Event(id=sse.id, event=sse.event, data=sse.data)

    def failed(self, exc: Exception | None) -> None:
        self._failures += 1
        if self._failures > self._max_reconnects:
            why = repr(exc) if exc is not None else "the server kept closing it early"
            raise StreamError(
                f"{self._path}: gave up after {self._max_reconnects} reconnects ({why})",
                self.last_event_id,
            ) from exc

    def _backoff_s(self) -> float:
        return min(0.1 * 2 ** (self._failures - 1), _MAX_BACKOFF_S)

    def pause_sync(self) -> None:
        time.sleep(self._backoff_s())

    async def pause(self) -> None:
        await asyncio.sleep(self._backoff_s())


def batch_bodies(
    jobs: Iterable[JobSpec], metadata: dict[str, object], max_batch_bytes: int
) -> Iterator[bytes]:
    """Request bodies of at most 10,000 jobs and about `max_batch_bytes` each, in order, made
    as they are sent: a run of 100,000 jobs never has more than one body in memory."""
    tail = b'],"metadata":' + json.dumps(metadata).encode() + b"}"
    batch: list[bytes] = []
    size = 0
    for spec in jobs:
        # Only what the caller set: unset limits take the gateway's defaults.
        encoded = spec.model_dump_json(exclude_unset=True).encode()
        if batch and (len(batch) == MAX_JOBS_PER_REQUEST or size + len(encoded) > max_batch_bytes):
            yield b'{"jobs":[' + b",".join(batch) + tail
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
    if not batch:
        raise ValueError("a run needs at least one job")
    yield b'{"jobs":[' + b",".join(batch) + tail


def batch_request(body: bytes) -> dict[str, Any]:
    """A batch's request arguments, for a sync client: its body sent once and let go of.

    httpx's request and response refer to each other, a cycle that only the garbage
    collector frees, and a large bytes object does not wake it: given as `content`, every
    batch sent stayed in memory for a while (a 100,000-sample eval's client grew by ~380
    MB of sent batches). A generator lets go of the body as soon as it has been sent; a new
    one per attempt makes a retry send it again, and its length keeps it unchunked."""

    def once() -> Iterator[bytes]:
        yield body

    return {"content": once(), "headers": _batch_headers(body)}


def async_batch_request(body: bytes) -> dict[str, Any]:
    """`batch_request` for an async client."""

    async def once() -> AsyncIterator[bytes]:
        yield body

    return {"content": once(), "headers": _batch_headers(body)}


def _batch_headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "Content-Length": str(len(body))}


def merge_accepted(first: RunAccepted, appended: list[RunAccepted]) -> RunAccepted:
    """One answer for a run submitted in several requests."""
    job_ids = list(first.job_ids)
    for more in appended:
        job_ids.extend(more.job_ids)
    total = appended[-1].total_jobs if appended else first.total_jobs
    return first.model_copy(update={"job_ids": job_ids, "total_jobs": total})
