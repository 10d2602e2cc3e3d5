"""Stored events read from a replicated stream (a real three-node nats-server cluster): a
follower that answers direct gets before it has applied the newest events must not make the
gateway lose or misreport any of them.

The gateway under test is connected to a follower of EVENTS that the cluster's route relays
hold back (tests.nats_cluster): it stays connected and current in everything but that stream,
and every direct get the gateway makes is answered there, from what it has applied. What the
stale follower lacks, the gateway's event feed (whose consumer is kept on another node) has
already handed out: a job stream starting then reads what is stored up to the feed's position.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import FinishedEvent, StreamSettings, connect, ensure_streams
from bus import subjects as s
from gateway.bus_client import GatewayBus
from gateway.stored_events import LEADER_READS
from gateway.workers_registry import WorkerRegistry
from tests.gateway.job_events import SETTLE_S, Job, Seen, follow, new_record
from tests.nats_cluster import NatsCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_REPLICAS = 3
_START_TIMEOUT_S = 60.0
# Where a watch keeps the event feed reading while a test runs (no job has this subject).
_KEEPER = s.events_subject("r-keeper", "j-keeper")
# The feed's consumer lands on a random node of the stream's; tries to keep it off the one
# held back (two in three land elsewhere).
_PLACEMENT_TRIES = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    running = NatsCluster(tmp_path_factory.mktemp("replicated"))
    running.start()
    try:
        asyncio.run(_make_streams(running))
        yield running
    finally:
        running.stop()


async def _make_streams(cluster: NatsCluster) -> None:
    await cluster.ready(_START_TIMEOUT_S)
    nc = await connect(cluster.settings("gateway"), "gateway", "replicated-setup")
    try:
        async with asyncio.timeout(_START_TIMEOUT_S):
            while True:
                try:  # a cluster that has just met may not place a stream yet
                    await ensure_streams(nc.jetstream(), StreamSettings(replicas=_REPLICAS))
                    return
                except Exception:  # nats-py raises several types; tried again
                    await asyncio.sleep(0.2)
    finally:
        await nc.close()


@dataclass
class Replicas:
    """The gateway's bus on `follower`, a follower of EVENTS that the test may hold back."""

    cluster: NatsCluster
    follower: str
    raft_group: str
    bus: GatewayBus
    worker: JetStreamContext
    debug: NATS

    def hold_back(self) -> None:
        """From now on, the follower applies no new event (until the test ends)."""
        self.cluster.hold_back(self.follower, self.raft_group)

    async def applied(self, seq: int) -> bool:
        """Whether the follower has applied position `seq` (the bus's direct gets go there)."""
        try:
            await self.bus.js.get_msg(s.EVENTS_STREAM, seq=seq, direct=True)
        except NotFoundError:
            return False
        return True

    async def caught_up(self, seq: int) -> None:
        await _until(lambda: self.applied(seq))


@pytest.fixture
async def replicas(cluster: NatsCluster) -> AsyncIterator[Replicas]:
    debug = await connect(cluster.settings("debug"), "debug", "replicated-debug")
    info = json.loads((await debug.request(f"$JS.API.STREAM.INFO.{s.EVENTS_STREAM}", b"")).data)
    follower = next(node.name for node in cluster.nodes if node.name != info["cluster"]["leader"])
    worker_nc = await connect(cluster.settings("worker"), "worker", "replicated-worker")
    worker = worker_nc.jetstream()
    bus = await GatewayBus.start(
        cluster.settings("gateway", follower),
        StreamSettings(replicas=_REPLICAS),
        WorkerRegistry(10.0),
    )
    found = Replicas(cluster, follower, info["cluster"]["raft_group"], bus, worker, debug)
    try:
        # A follower answers direct gets once it has caught up with the stream.
        ack = await worker.publish(_KEEPER, b"{}")
        await _until(lambda: _answers_direct_gets(bus))
        await found.caught_up(ack.seq)
        await _feed_off(found)
        yield found
    finally:
        cluster.release()
        await bus.close()
        await worker_nc.close()
        await debug.close()


async def _answers_direct_gets(bus: GatewayBus) -> bool:
    try:
        await bus.js.get_msg(s.EVENTS_STREAM, seq=1, direct=True)
    except Exception:  # no responders yet, or not found
        return False
    return True


async def _feed_off(replicas: Replicas) -> None:
    """Start the bus's event feed with its consumer on another node than the follower (a
    feed reading from the held-back follower would hand out nothing new), and keep it."""
    await _until(lambda: _no_consumer(replicas.debug))  # an earlier test's feed is gone
    for _ in range(_PLACEMENT_TRIES):
        await replicas.bus.feed.open(_KEEPER)
        if await _feed_node(replicas.debug) != replicas.follower:
            return
        await replicas.bus.feed.close()
        await _until(lambda: _no_consumer(replicas.debug))
    raise AssertionError("the event feed's consumer was placed on the follower every time")


async def _feed_node(debug: NATS) -> str:
    names = json.loads((await debug.request(f"$JS.API.CONSUMER.NAMES.{s.EVENTS_STREAM}", b"")).data)
    [name] = names["consumers"]
    info = await debug.request(f"$JS.API.CONSUMER.INFO.{s.EVENTS_STREAM}.{name}", b"")
    return str(json.loads(info.data)["cluster"]["leader"])


async def _no_consumer(debug: NATS) -> bool:
    names = json.loads((await debug.request(f"$JS.API.CONSUMER.NAMES.{s.EVENTS_STREAM}", b"")).data)
    return not names["consumers"]


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(SETTLE_S):
        while not await condition():
            await asyncio.sleep(0.02)


async def _fed(bus: GatewayBus, job: Job, publish: Callable[[], Awaitable[None]]) -> None:
    """Run `publish` (more of the job's events), until the event feed has handed them out."""
    subject = s.events_subject(job.record.run_id, job.record.job_id)
    async with bus.feed.watch(subject) as watch:
        await publish()
        last = job.seen[-1][0]
        async with asyncio.timeout(SETTLE_S):
            async for msg in watch.messages():
                if msg.seq == last:
                    return


def _behind() -> float:
    return LEADER_READS.labels("behind")._value.get()


async def test_a_stream_begun_while_its_replica_is_behind_gets_every_event(
    replicas: Replicas,
) -> None:
    job = Job(replicas.worker, new_record())
    await job.start()
    await job.print("applied\n")
    await replicas.caught_up(job.seen[-1][0])
    replicas.hold_back()

    async def more() -> None:
        await job.print("not applied\n")
        await job.print("nor this\n")

    await _fed(replicas.bus, job, more)
    # The follower that answers the gateway's direct gets has not applied them.
    assert not await replicas.applied(job.seen[-1][0])
    behind = _behind()
    got: list[Seen] = []
    client = asyncio.create_task(follow(replicas.bus, job.record, got=got))
    async with asyncio.timeout(SETTLE_S):
        while len(got) < 3:  # its tail watches the feed, and has read the stream
            await asyncio.sleep(0.01)
    await job.finish()
    async with asyncio.timeout(SETTLE_S):
        assert await client == job.seen
    assert _behind() - behind == 2  # each one the follower lacked came from the leader


async def test_a_replay_from_a_replica_that_is_behind_misses_nothing(
    replicas: Replicas, small_ring: None
) -> None:
    # A client follows the job live; another resumes from its first line after the tail's
    # ring (16 entries here) has moved past what the follower has applied: it replays the
    # difference from the stream.
    job = Job(replicas.worker, new_record())
    await job.start()
    await job.print("0\n")
    await replicas.caught_up(job.seen[-1][0])
    resume_after = job.seen[-1][0]
    replicas.hold_back()
    live: list[Seen] = []
    first = asyncio.create_task(follow(replicas.bus, job.record, got=live))

    async def lines() -> None:
        for line in range(1, 30):
            await job.print(f"{line}\n")

    await _fed(replicas.bus, job, lines)
    async with asyncio.timeout(SETTLE_S):
        while len(live) < len(job.seen):
            await asyncio.sleep(0.01)
    assert not await replicas.applied(job.seen[-1][0])
    second = asyncio.create_task(follow(replicas.bus, job.record, last_event_id=resume_after))
    await job.finish()
    async with asyncio.timeout(SETTLE_S):
        assert await first == job.seen
        assert await second == job.after(resume_after)


async def test_a_result_that_a_replica_lacks_is_not_taken_for_gone(replicas: Replicas) -> None:
    job = Job(replicas.worker, new_record())
    await job.start()
    await replicas.caught_up(job.seen[-1][0])
    replicas.hold_back()
    finished_seq = await job.finish()
    assert not await replicas.applied(finished_seq)
    # A run stream fetches each finished job's result by its position (which a consumer on
    # another node gave it): "aged out" would drop the job's `finished` from the stream.
    stored = await replicas.bus.event_at(finished_seq)
    assert stored is not None and isinstance(stored.event, FinishedEvent)
    assert stored.seq == finished_seq


async def test_a_jobs_status_is_its_newest_event_while_a_replica_is_behind(
    replicas: Replicas,
) -> None:
    job = Job(replicas.worker, new_record())
    await job.start()
    await replicas.caught_up(job.seen[-1][0])
    replicas.hold_back()
    finished_seq = await job.finish()
    assert not await replicas.applied(finished_seq)
    # GET /v1/jobs/{id} tells the job's status by its newest event: finished, as the client
    # that watched it finish was told, not running.
    last = await replicas.bus.last_event(job.record)
    assert last is not None and last.seq == finished_seq


async def test_a_single_replica_stream_is_read_with_direct_gets_alone(
    bus: GatewayBus, worker: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One nats-server: it is the stream's leader, and its direct gets are the whole read.
    job = Job(worker, new_record())
    await job.start()
    await job.print("1\n")
    finished_seq = await job.finish()
    async with bus.feed.watch(_KEEPER):  # the feed is up: the stream reads nothing for it
        requests: list[str] = []
        publish = bus.nc.publish

        async def recorded(subject: str, *args: Any, **kwargs: Any) -> None:
            requests.append(subject)
            await publish(subject, *args, **kwargs)

        monkeypatch.setattr(bus.nc, "publish", recorded)
        assert await follow(bus, job.record) == job.seen
        last = await bus.last_event(job.record)
        stored = await bus.event_at(finished_seq)
    assert last is not None and stored is not None and last.seq == stored.seq == finished_seq
    # Three reads, three direct gets, nothing asked of the leader's API.
    assert len(requests) == 3
    assert all(r.startswith(s.direct_get_subject(s.EVENTS_STREAM)) for r in requests)
