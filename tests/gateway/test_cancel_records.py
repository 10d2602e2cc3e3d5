"""Cancelling many jobs at once (a run): every cancel is on record before any worker hears
of one, since the first worker to hear may pull another of the jobs at once (real
nats-server)."""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from bus import connect
from bus import subjects as s
from gateway.bus_client import GatewayBus
from tests.gateway.job_events import until
from tests.stack import NatsServer


async def test_every_cancel_is_on_record_before_the_first_notice(
    bus: GatewayBus, nats_server: NatsServer
) -> None:
    job_ids = [f"j-cancel-{number}" for number in range(50)]
    worker = await connect(nats_server.settings("worker"), "worker", "test-worker")
    js = worker.jetstream()
    unrecorded: list[int] = []

    async def on_notice(msg: Msg) -> None:
        if unrecorded:
            return
        # What a worker freed by this notice reads next: another job's cancel record.
        missing = 0
        for job_id in reversed(job_ids):
            try:
                await js.get_last_msg(
                    s.CANCELS_BUCKET_STREAM, s.cancel_key_subject(job_id), direct=True
                )
            except NotFoundError:
                missing += 1
        unrecorded.append(missing)

    try:
        await worker.subscribe(s.CANCEL_ALL, cb=on_notice)
        await worker.flush()
        await bus.cancel(job_ids)
        await until(lambda: bool(unrecorded))
    finally:
        await worker.close()
    assert unrecorded == [0]
