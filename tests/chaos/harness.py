"""Load, faults and the counts that judge them: submitted, finished, lost, duplicated.

A job is *lost* when it never got a final result, *duplicated* when it got more than one.
The counts come from the EVENTS stream itself (read with the read-only `debug` identity),
not from the gateway under test, and are printed so that a CI log shows them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field

import httpx

from bus import connect
from bus import subjects as s
from bus.models import JOB_EVENT
from tests.stack import Stack

# About a second of work printing a line every 0.2 s: long enough to be caught running.
TICKER = {
    "language": "python",
    "code": (
        "import time\nfor i in range(5):\n    print('tick', i, flush=True)\n    time.sleep(0.2)\n"
    ),
    "expected_stdout": "".join(f"tick {i}\n" for i in range(5)),
}
_SETTLE_TIMEOUT_S = 180.0


@dataclass
class Counts:
    """What happened to a run's jobs, read from the EVENTS stream."""

    fault: str
    submitted: int
    finished: int = 0
    lost: int = 0
    duplicated: int = 0
    retried: int = 0  # jobs that needed more than one attempt
    verdicts: Counter[str] = field(default_factory=Counter)

    def report(self) -> str:
        return (
            f"[chaos] {self.fault}: submitted={self.submitted} finished={self.finished} "
            f"lost={self.lost} duplicated={self.duplicated} retried={self.retried} "
            f"verdicts={dict(self.verdicts)}"
        )


def submit_run(stack: Stack, jobs: int, spec: dict[str, object] = TICKER) -> tuple[str, list[str]]:
    response = httpx.post(
        f"{stack.url}/v1/runs",
        json={"jobs": [spec] * jobs},
        headers=stack.headers(),
        timeout=30,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    return body["id"], body["job_ids"]


def wait_until(predicate, timeout_s: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass  # the gateway may be down on purpose
        time.sleep(0.5)
    raise AssertionError(f"{what} not met within {timeout_s} s")


def running_jobs(stack: Stack, run_id: str) -> int:
    response = httpx.get(f"{stack.url}/v1/runs/{run_id}", headers=stack.headers(), timeout=10)
    return int(response.json()["counts"]["running"]) if response.status_code == 200 else 0


def run_done(stack: Stack, run_id: str, jobs: int) -> bool:
    response = httpx.get(f"{stack.url}/v1/runs/{run_id}", headers=stack.headers(), timeout=10)
    return response.status_code == 200 and response.json()["counts"]["finished"] == jobs


@dataclass
class StreamFacts:
    """Per job: its `finished` events as (attempt, verdict), and every attempt seen."""

    finals: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    attempts: dict[str, set[int]] = field(default_factory=dict)


async def read_events(stack: Stack, run_id: str) -> StreamFacts:
    """Everything stored for the run, straight from the EVENTS stream."""
    nc = await connect(stack.nats(), "debug", "chaos-count")
    facts = StreamFacts()
    try:
        sub = await nc.jetstream().subscribe(
            s.run_events_subject(run_id), stream=s.EVENTS_STREAM, ordered_consumer=True
        )
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except TimeoutError:
                break
            event = JOB_EVENT.validate_json(msg.data)
            facts.attempts.setdefault(event.job_id, set()).add(event.attempt)
            if event.type == "finished":
                final = (event.attempt, event.result.verdict.value)
                facts.finals.setdefault(event.job_id, []).append(final)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await nc.close()
    return facts


def settle_and_count(stack: Stack, fault: str, run_id: str, job_ids: list[str]) -> Counts:
    """Wait for every job to finish (or the timeout), then count from the EVENTS stream."""
    with suppress(AssertionError):  # a job that never finishes is counted as lost below
        wait_until(lambda: run_done(stack, run_id, len(job_ids)), _SETTLE_TIMEOUT_S, "run done")
    facts = asyncio.run(read_events(stack, run_id))
    counts = Counts(fault=fault, submitted=len(job_ids))
    for job_id in job_ids:
        results = facts.finals.get(job_id, [])
        counts.retried += len(facts.attempts.get(job_id, ())) > 1
        if not results:
            counts.lost += 1
            continue
        counts.finished += 1
        if len(results) > 1:
            counts.duplicated += 1
            print(f"[chaos] {job_id} has {len(results)} results: {results}", flush=True)
        counts.verdicts[results[-1][1]] += 1
    print(counts.report(), flush=True)
    return counts
