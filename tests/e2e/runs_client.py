"""Test helpers for runs: submit, follow to the end, read results (plain httpx)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.sse_client import Event, stream
from tests.stack import Stack

_TIMEOUT = httpx.Timeout(60.0)


def submit_run(
    stack: Stack, jobs: list[dict[str, Any]], metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = {"jobs": jobs, "metadata": metadata or {}}
    response = httpx.post(
        f"{stack.url}/v1/runs", json=body, headers=stack.headers(), timeout=_TIMEOUT
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


def follow(accepted: dict[str, Any]) -> list[Event]:
    """The run's whole event stream, to its end."""
    events = stream(accepted["events_url"])
    assert events[-1].event == "progress", events[-1]
    assert events[-1].data["done"] == events[-1].data["total"]
    return events


def get_run(stack: Stack, run_id: str, k: str | None = None) -> dict[str, Any]:
    params = {"k": k} if k else None
    response = httpx.get(f"{stack.url}/v1/runs/{run_id}", headers=stack.headers(), params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def results(stack: Stack, accepted: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.get(accepted["results_url"], headers=stack.headers(), timeout=_TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def finished(events: list[Event]) -> list[Event]:
    return [event for event in events if event.event == "finished"]
