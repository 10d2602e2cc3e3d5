"""A three-node NATS cluster on loopback (`crucible up --cluster 3`): losing a node under load
loses nothing, because every stream and bucket keeps three copies."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from bus import connect
from bus import subjects as s
from tests.chaos.harness import running_jobs, settle_and_count, submit_run, wait_until
from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

_JOBS = 24


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"CRUCIBLE_STREAMS__ACK_WAIT_S": "3"}
    with running_stack(tmp_path_factory.mktemp("cluster"), 2, env, nats_nodes=3) as running:
        yield running


async def replicas(stack: Stack) -> dict[str, int]:
    nc = await connect(stack.nats(), "debug", "chaos-replicas")
    try:
        js = nc.jetstream()
        names = [s.JOBS_STREAM, s.EVENTS_STREAM, s.AUDIT_STREAM, s.JOBS_BUCKET_STREAM]
        return {name: (await js.stream_info(name)).config.num_replicas or 1 for name in names}
    finally:
        await nc.close()


def test_every_stream_has_three_copies(cluster: Stack) -> None:
    assert set(asyncio.run(replicas(cluster)).values()) == {3}


def test_losing_a_nats_node_under_load_loses_nothing(cluster: Stack) -> None:
    run_id, job_ids = submit_run(cluster, _JOBS)
    wait_until(lambda: running_jobs(cluster, run_id) > 0, what="a job running")
    nodes = cluster.processes("nats-server")
    assert len(nodes) == 3
    os.kill(nodes[0], signal.SIGKILL)  # `crucible up` restarts it; it catches up from the others
    counts = settle_and_count(cluster, "one of three NATS nodes SIGKILLed", run_id, job_ids)
    assert (counts.lost, counts.duplicated) == (0, 0)
    assert counts.verdicts == {"accepted": _JOBS}
