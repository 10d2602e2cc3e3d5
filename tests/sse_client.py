"""Test helpers that talk to a running stack the way a client would: HTTP and SSE."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.stack import Stack

_TIMEOUT = httpx.Timeout(30.0)


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    data: dict[str, Any]


def submit(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.url}/v1/jobs", json=spec, headers=stack.headers(), timeout=_TIMEOUT
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def stream(
    url: str,
    headers: dict[str, str] | None = None,
    last_event_id: str | None = None,
    stop_after: int | None = None,
    verify: ssl.SSLContext | bool = True,
) -> list[Event]:
    """Read SSE events until the server ends the stream (or `stop_after` events)."""
    sent = dict(headers or {})
    if last_event_id is not None:
        sent["Last-Event-ID"] = last_event_id
    events: list[Event] = []
    with (
        httpx.Client(timeout=_TIMEOUT, verify=verify) as client,
        connect_sse(client, "GET", url, headers=sent) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            events.append(Event(sse.id, sse.event, json.loads(sse.data)))
            if stop_after is not None and len(events) >= stop_after:
                break
    return events


def run_job(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    """Submit, follow the job's events to the end, return the `finished` data."""
    accepted = submit(stack, spec)
    events = stream(accepted["events_url"])
    assert events[-1].event == "finished", events
    return events[-1].data
