"""The gateway's CPU per request, and nats-server's beside it, for each kind of request a job makes.

    .venv/bin/python -m bench.gateway_cost [--requests 200]

Starts `crucible up`, then sends `--requests` of each kind one after another from one
keep-alive connection (stdlib `http.client`, so that the client costs little): `POST
/v1/jobs` of `print(1)` (the workers run them meanwhile: nats-server's figure includes their
fetches and stores), the SSE stream of each of those jobs once finished (a replay to
`finished`), `GET /v1/jobs/{id}` and `GET /healthz`; then a job's whole round trip as the
job runs, two ways: `POST /v1/jobs` and its `events_url` read to `finished`, and one `POST
/v1/jobs` answered with the job's own stream (`Accept: text/event-stream`). The CPU of both
processes is read from /proc before and after each kind; an idle stretch is measured too, to
show what the background (heartbeats) adds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from bench.results import positive
from bench.stack_cpu import stack_cpu_s
from tests.stack import Stack, start_stack

PRINT_ONE = json.dumps({"language": "python", "code": "print(1)"})
_SETTLE_S = 1.0  # for the workers to finish the jobs posted
_IDLE_S = 2.0
# Requests come faster than the default rate limit lets one key make them.
_UNLIMITED = {
    "CRUCIBLE_RATE_LIMIT__REQUESTS_PER_S": "1000000",
    "CRUCIBLE_RATE_LIMIT__BURST": "1000000",
}
_KINDS = ("gateway", "nats-server")  # as bench.stack_cpu names them


class Caller:
    """Requests on one keep-alive connection, and SSE streams each on a connection of its own."""

    def __init__(self, stack: Stack) -> None:
        url = urlsplit(stack.url)
        self._address = (url.hostname or "127.0.0.1", url.port or 80)
        self._headers = {**stack.headers(), "Content-Type": "application/json"}
        self._connection = http.client.HTTPConnection(*self._address)

    def request(self, method: str, path: str, body: str | None = None) -> dict[str, str]:
        self._connection.request(method, path, body=body, headers=self._headers)
        response = self._connection.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data!r}")
        result: dict[str, str] = json.loads(data)
        return result

    def replay(self, url: str) -> None:
        self._stream("GET", urlsplit(url).path, None, self._headers)

    def submit_streamed(self, body: str) -> None:
        """POST a job asking for its stream in the answer, read to `finished`."""
        self._stream("POST", "/v1/jobs", body, self._headers | {"Accept": "text/event-stream"})

    def _stream(self, method: str, path: str, body: str | None, headers: dict[str, str]) -> None:
        connection = http.client.HTTPConnection(*self._address)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            seen = b""
            while b"event: finished" not in seen:
                more = response.read1(65536)
                if not more:
                    raise RuntimeError(f"the stream of {method} {path} ended before `finished`")
                seen += more
        finally:
            connection.close()


def _cpu_ms(stack: Stack, work: Callable[[], None], count: int) -> tuple[float, float]:
    """Gateway and nats-server CPU per unit of `work`, in ms."""
    before = stack_cpu_s(stack.process.pid)
    work()
    after = stack_cpu_s(stack.process.pid)
    gateway, nats = ((after[k] - before.get(k, 0.0)) / count * 1000 for k in _KINDS)
    return gateway, nats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=positive, default=200, help="of each kind")
    count = parser.parse_args().requests
    with tempfile.TemporaryDirectory(prefix="crucible-bench-", ignore_cleanup_errors=True) as work:
        (Path(work) / "stack").mkdir()
        stack = start_stack(Path(work) / "stack", workers=2, env=_UNLIMITED)
        try:
            caller = Caller(stack)
            jobs: list[dict[str, str]] = []
            for _ in range(20):  # warm
                caller.replay(caller.request("POST", "/v1/jobs", PRINT_ONE)["events_url"])

            def post() -> None:
                jobs.extend(caller.request("POST", "/v1/jobs", PRINT_ONE) for _ in range(count))
                time.sleep(_SETTLE_S)

            def replays() -> None:
                for job in jobs:
                    caller.replay(job["events_url"])

            def views() -> None:
                for job in jobs:
                    caller.request("GET", urlsplit(job["url"]).path)

            def posted_then_followed() -> None:
                for _ in range(count):
                    caller.replay(caller.request("POST", "/v1/jobs", PRINT_ONE)["events_url"])

            def streamed() -> None:
                for _ in range(count):
                    caller.submit_streamed(PRINT_ONE)

            def health() -> None:
                for _ in range(count):
                    caller.request("GET", "/healthz")

            rows = {
                "POST /v1/jobs (print(1), run meanwhile)": _cpu_ms(stack, post, count),
                "SSE stream of a finished job, to `finished`": _cpu_ms(stack, replays, count),
                "GET /v1/jobs/{id}": _cpu_ms(stack, views, count),
                "GET /healthz": _cpu_ms(stack, health, count),
                "a job, POST then its SSE stream to `finished` (live)": _cpu_ms(
                    stack, posted_then_followed, count
                ),
                "a job, one POST with `Accept: text/event-stream`, to `finished`": _cpu_ms(
                    stack, streamed, count
                ),
            }
            idle = _cpu_ms(stack, lambda: time.sleep(_IDLE_S), 1)
        finally:
            stack.stop()
    print(f"\n{count} requests of each kind, one after another\n")
    print("| request | gateway CPU | nats-server CPU |\n|---|---|---|")
    for name, (gateway_ms, nats_ms) in rows.items():
        print(f"| {name} | {gateway_ms:.2f} ms | {nats_ms:.2f} ms |")
    gateway_idle, nats_idle = (ms / _IDLE_S for ms in idle)
    print(f"| (idle, per second: heartbeats) | {gateway_idle:.2f} ms | {nats_idle:.2f} ms |")


if __name__ == "__main__":
    main()
