"""`crucible top`: the queue, the workers, throughput and verdicts, live, from NATS itself.

It connects with the read-only `debug` identity: JetStream reports the queue, worker
heartbeats name the workers, and the `Crucible-Verdict` header of each `finished` event as it
is stored gives throughput and verdicts, without reading any job's output.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from bus import NatsSettings, WorkerHeartbeat, connect
from bus import subjects as s

_WINDOW_S = 10.0  # throughput is averaged over this
_STALE_S = 10.0  # a worker silent this long is left out


@dataclass
class Snapshot:
    """What `top` knows at one moment."""

    started: float = field(default_factory=time.monotonic)
    queued: int = 0
    waiting: int = 0
    running: int = 0
    redelivered: int = 0
    workers: dict[str, tuple[float, WorkerHeartbeat]] = field(default_factory=dict)
    verdicts: Counter[str] = field(default_factory=Counter)
    recent: deque[float] = field(default_factory=deque)  # when each recent job finished

    def throughput(self, now: float) -> float:
        while self.recent and self.recent[0] < now - _WINDOW_S:
            self.recent.popleft()
        return len(self.recent) / min(_WINDOW_S, max(now - self.started, 1e-9))

    def live_workers(self, now: float) -> list[WorkerHeartbeat]:
        return [hb for seen, hb in self.workers.values() if seen >= now - _STALE_S]


def render(snapshot: Snapshot) -> Group:
    now = time.monotonic()
    queue = Table(title="queue (JOBS)")
    for column in ("jobs", "waiting", "running", "redelivered", "finished/s"):
        queue.add_column(column, justify="right")
    queue.add_row(
        str(snapshot.queued),
        str(snapshot.waiting),
        str(snapshot.running),
        str(snapshot.redelivered),
        f"{snapshot.throughput(now):.1f}",
    )
    workers = Table(title="workers")
    for column in ("worker", "backend", "busy", "capacity"):
        workers.add_column(column)
    for heartbeat in sorted(snapshot.live_workers(now), key=lambda hb: hb.worker_id):
        workers.add_row(
            heartbeat.worker_id, heartbeat.backend, str(heartbeat.busy), str(heartbeat.capacity)
        )
    verdicts = Table(title="verdicts")
    verdicts.add_column("verdict")
    verdicts.add_column("jobs", justify="right")
    for verdict, count in snapshot.verdicts.most_common():
        verdicts.add_row(verdict, str(count))
    return Group(queue, workers, verdicts)


class Watcher:
    """Keeps a Snapshot current from NATS."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = WorkerHeartbeat.model_validate_json(msg.data)
        except ValidationError:
            return
        self.snapshot.workers[heartbeat.worker_id] = (time.monotonic(), heartbeat)

    async def on_event(self, msg: Msg) -> None:
        verdict = (msg.headers or {}).get(s.VERDICT_HEADER)
        if verdict is not None:
            self.snapshot.verdicts[verdict] += 1
            self.snapshot.recent.append(time.monotonic())


async def watch(
    nats: NatsSettings, once_after_s: float | None, refresh_s: float, console: Console
) -> None:
    """Show the view until Ctrl-C; with `once_after_s`, print one snapshot after that long."""
    nc = await connect(nats, service="debug", name="crucible-top")
    watcher = Watcher()
    try:
        await nc.subscribe(s.WORKERS_ALL, cb=watcher.on_heartbeat)
        await nc.subscribe(s.EVENTS_ALL, cb=watcher.on_event)
        js = nc.jetstream()

        async def refresh() -> None:
            stream = await js.stream_info(s.JOBS_STREAM)
            consumer = await js.consumer_info(s.JOBS_STREAM, s.WORKERS_CONSUMER)
            snap = watcher.snapshot
            snap.queued = stream.state.messages
            snap.waiting = consumer.num_pending or 0
            snap.running = consumer.num_ack_pending or 0
            snap.redelivered = consumer.num_redelivered or 0

        if once_after_s is not None:
            await nc.flush()  # subscribed for sure before saying so
            print(f"crucible top: watching for {once_after_s:g} s", file=sys.stderr, flush=True)
            await asyncio.sleep(once_after_s)
            await refresh()
            console.print(render(watcher.snapshot))
            return
        with Live(render(watcher.snapshot), console=console, auto_refresh=False) as live:
            while True:
                await refresh()
                live.update(render(watcher.snapshot), refresh=True)
                await asyncio.sleep(refresh_s)
    finally:
        await nc.close()
