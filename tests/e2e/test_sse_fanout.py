"""Many SSE clients on one job, over HTTP through a real stack: all share one live tail, each
gets every event after its `Last-Event-ID` exactly once, a stalled one holds up nobody, and
the tail (its JetStream consumer) is gone once they have all left."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus import connect
from bus import subjects as s
from tests.e2e.runs_client import submit_run
from tests.sse_client import Event, stream, submit
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.slow

PRINTER = {
    "language": "python",
    "code": (
        "import time\nfor i in range(60):\n    print('line', i, flush=True)\n    time.sleep(0.05)\n"
    ),
    "limits": {"wall_time_s": 30},
}
OUTPUT = "".join(f"line {i}\n" for i in range(60))
_SETTLE_S = 10.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own stack: the consumer and tail counts below are this module's alone.
    env = {
        "CRUCIBLE_RATE_LIMIT__BURST": "100000",
        "CRUCIBLE_RATE_LIMIT__REQUESTS_PER_S": "1e5",
        # The jobs' event feed (one consumer) stops soon after its last watcher leaves.
        "CRUCIBLE_EVENT_FEED_LINGER_S": "0.2",
    }
    with running_stack(tmp_path_factory.mktemp("fanout"), workers=1, env=env) as running:
        yield running


def live_tails(stack: Stack, kind: str = "job") -> float:
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "crucible_sse_live_tails" and sample.labels == {"stream": kind}
    )


def events_consumers(stack: Stack) -> int:
    async def count() -> int:
        nc = await connect(stack.nats(), "debug", "test-fanout")
        try:
            return (await nc.jetstream().stream_info(s.EVENTS_STREAM)).state.consumer_count
        finally:
            await nc.close()

    return asyncio.run(count())


def settled(stack: Stack, kind: str = "job") -> tuple[float, int]:
    """The live tails and EVENTS consumers left, once the gateway has torn them down."""
    deadline = time.monotonic() + _SETTLE_S
    left = (live_tails(stack, kind), events_consumers(stack))
    while left != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
        left = (live_tails(stack, kind), events_consumers(stack))
    return left


class Follower(threading.Thread):
    """One SSE client, reading the job's stream to its end from `last_event_id`."""

    def __init__(self, url: str, last_event_id: str | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.last_event_id = last_event_id
        self.events: list[Event] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.events = stream(self.url, last_event_id=self.last_event_id)
        except BaseException as exc:  # reported by the test
            self.error = exc


def check_whole(events: list[Event]) -> None:
    """Every event once, in order, the whole output, ending with `finished`."""
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)), "repeated or out of order"
    assert events[0].event == "queued" and events[-1].event == "finished"
    stdout = "".join(str(e.data["data"]) for e in events if e.event == "stdout")
    assert stdout == OUTPUT
    keys = [(e.data["attempt"], e.data["seq"]) for e in events if e.event == "stdout"]
    assert len(keys) == len(set(keys))


def test_many_clients_and_late_joiners_each_get_every_event_once(stack: Stack) -> None:
    accepted = submit(stack, PRINTER)
    url = accepted["events_url"]
    leader = Follower(url)
    crowd = [Follower(url) for _ in range(25)]
    for follower in [leader, *crowd]:
        follower.start()
    # Joiners at random moments while the job prints, each resuming after an id that a
    # live client of its own got so far (a short read, then a resume: a reconnect).
    rng = random.Random(10)
    joiners: list[Follower] = []
    for _ in range(12):
        time.sleep(rng.uniform(0.05, 0.3))
        seen = stream(url, stop_after=rng.randint(1, 30))
        joiner = Follower(url, last_event_id=seen[-1].id)
        joiner.start()
        joiners.append(joiner)
    for follower in [leader, *crowd, *joiners]:
        follower.join(60)
        assert follower.error is None, follower.error
    check_whole(leader.events)
    for follower in crowd:
        assert follower.events == leader.events
    for joiner in joiners:
        position = [e.id for e in leader.events].index(str(joiner.last_event_id))
        assert joiner.events == leader.events[position + 1 :], f"after {joiner.last_event_id}"
    assert settled(stack) == (0, 0)


def test_a_stalled_client_holds_up_nobody_and_still_gets_every_event(stack: Stack) -> None:
    accepted = submit(stack, PRINTER)
    url = accepted["events_url"]
    fast = [Follower(url) for _ in range(5)]
    stalled: list[Any] = []
    with httpx.Client(timeout=60) as client, client.stream("GET", url) as response:
        lines = response.iter_lines()
        stalled.append(next(lines))  # connected, and then it reads nothing for a while
        for follower in fast:
            follower.start()
        for follower in fast:
            follower.join(60)
            assert follower.error is None, follower.error
            check_whole(follower.events)
        stalled.extend(lines)  # now it reads on, to the end
    text = "\n".join(stalled)
    assert text.count("event: stdout") + text.count("event: started") == sum(
        e.event in ("stdout", "started") for e in fast[0].events
    )
    assert text.count("event: finished") == 1
    assert settled(stack) == (0, 0)


def test_the_tail_is_gone_when_the_last_client_leaves_mid_job(stack: Stack) -> None:
    accepted = submit(stack, PRINTER)
    url = accepted["events_url"]
    with httpx.Client(timeout=60) as client, ExitStack() as held:
        responses = [held.enter_context(client.stream("GET", url)) for _ in range(5)]
        # One line iterator per response, kept: leaving an iterator closes its response.
        lines = [response.iter_lines() for response in responses]
        for each in lines:
            while next(each) != "event: stdout":
                pass  # past `queued`: following the tail
        assert live_tails(stack) == 1  # five clients, one tail
    assert settled(stack) == (0, 0)  # while the job still prints
    job = httpx.get(accepted["url"], headers=stack.headers(), timeout=10).json()
    assert job["status"] != "finished"


def test_submissions_answered_with_their_streams_leave_nothing_reading(stack: Stack) -> None:
    # Each submission watches its job before the job is enqueued; whether its client reads
    # the stream to the end or leaves at once, the watch goes (and the feed with it).
    spec = {"language": "python", "code": "print(1)"}
    headers = stack.headers() | {"Accept": "text/event-stream"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as client:
        for read_to_the_end in (True, False, False, True, False):
            with client.stream("POST", "/v1/jobs", json=spec) as response:
                assert response.status_code == 200
                if read_to_the_end:
                    assert "event: finished" in response.read().decode()
    assert settled(stack) == (0, 0)


def test_run_stream_clients_share_a_tail_and_each_gets_every_finished_once(stack: Stack) -> None:
    job = {"language": "python", "code": "import time\ntime.sleep(0.2)\nprint('done')"}
    accepted = submit_run(stack, [job] * 8)
    url = accepted["events_url"]
    crowd = [Follower(url) for _ in range(10)]
    for follower in crowd:
        follower.start()
    rng = random.Random(10)
    joiners: list[Follower] = []
    for _ in range(5):
        time.sleep(rng.uniform(0.1, 0.5))
        seen = stream(url, stop_after=rng.randint(1, 6))
        joiner = Follower(url, last_event_id=seen[-1].id)
        joiner.start()
        joiners.append(joiner)
    for follower in [*crowd, *joiners]:
        follower.join(60)
        assert follower.error is None, follower.error
    whole = crowd[0].events
    done = [e.data["id"] for e in whole if e.event == "finished"]
    assert sorted(done) == sorted(accepted["job_ids"])  # each job once
    assert whole[-1].event == "progress" and whole[-1].data["done"] == 8
    for follower in crowd:
        assert follower.events == whole
    for joiner in joiners:
        after = int(str(joiner.last_event_id))
        expected = [e for e in whole if int(e.id) > after]
        # Resumed between a `finished` and its `progress` (same id): that progress is not
        # repeated; resumed after the end: only the final progress comes again.
        assert joiner.events == (expected or whole[-1:]), f"after {after}"
    assert settled(stack, "run") == (0, 0)
