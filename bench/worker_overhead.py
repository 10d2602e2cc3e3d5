"""The worker's own cost per job around a real sandbox: CPU, NATS messages and latency.

    .venv/bin/python -m bench.worker_overhead [--jobs 300] [--samples 40] [--concurrency 1]
                                              [--profile FILE]

Starts a nats-server (monitoring on) and one `crucible worker` with its real sandbox, and
enqueues `print(1)` jobs straight on JOBS, as the gateway would, without the gateway. Prints:

- latency, one job at a time: enqueue -> `finished` seen on the bus (p50), and the same
  `print(1)` as a bare `/usr/bin/python3 -I -c` spawn (p50), for scale;
- a burst of `--jobs` jobs: jobs/s, and per job the worker process's CPU (its own threads, from
  /proc: the sandboxed programs are other processes) and the NATS messages its connection
  sent and received (the server's /connz), i.e. its round trips.

With `--profile FILE`, py-spy (if installed) records the worker during the burst (raw stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from nats.aio.client import Client as NATS

from bench.pipeline import bare_spawn_s
from bus import (
    FinishedEvent,
    JobMessage,
    JobSpec,
    NatsSettings,
    StreamSettings,
    connect,
    decode_event,
    ensure_streams,
    new_job_id,
    new_run_id,
    publish_all,
    utc_now,
)
from bus import subjects as s
from bus.pipeline import Outgoing
from crucible.natsconf import write_nats_config
from crucible.up import nats_server_binary
from tests.stack import free_port, wait_for_port

_WORKER_ID = "bench-worker"
_TENANT = "bench"
_READY_TIMEOUT_S = 30.0


def _cpu_s(pid: int) -> float:
    """User + system CPU of the process's own threads (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_msgs(monitor_url: str) -> tuple[int, int]:
    """Messages the worker's connection sent to the server, and received from it."""
    conns = httpx.get(f"{monitor_url}/connz", timeout=5).json()["connections"]
    (conn,) = [c for c in conns if c.get("name") == _WORKER_ID]
    return int(conn["in_msgs"]), int(conn["out_msgs"])


def _job(code: str = "print(1)") -> JobMessage:
    return JobMessage(
        job_id=new_job_id(),
        run_id=new_run_id(),
        tenant=_TENANT,
        spec=JobSpec(language="python", code=code),
        submitted_at=utc_now(),
    )


class Bench:
    """One nats-server and one worker; jobs in, `finished` events out."""

    def __init__(self, folder: Path, concurrency: int) -> None:
        self.folder = folder
        self.concurrency = concurrency
        self.monitor_port = free_port()
        self.layout = write_nats_config(folder, free_port(), monitor_port=self.monitor_port)
        self.finished: dict[str, asyncio.Event] = {}
        self.submitted: dict[str, datetime] = {}
        # Per job: enqueued -> run started, run started -> result judged, judged -> `finished`
        # seen on the bus. The first and last are the worker's and the bus's; the middle is
        # the sandbox's (and, where a store blocks the run, the bus's too).
        self.phases: dict[str, tuple[float, float, float]] = {}

    def settings(self, service: str) -> NatsSettings:
        return NatsSettings(url=self.layout.url, creds_file=self.layout.creds_files[service])

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start_nats(self) -> subprocess.Popen[bytes]:
        log = (self.folder / "nats.log").open("wb")
        server = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.layout.config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(int(self.layout.url.rsplit(":", 1)[1]))
        return server

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = (self.folder / "worker.log").open("wb")
        env = {
            **os.environ,
            "CRUCIBLE_NATS_URL": self.layout.url,
            "CRUCIBLE_NATS_CREDS_FILE": str(self.layout.creds_files["worker"]),
            "CRUCIBLE_WORKER_WORKER_ID": _WORKER_ID,
        }
        argv = [sys.executable, "-m", "crucible", "worker", "--concurrency"]
        return subprocess.Popen(
            [*argv, str(self.concurrency)], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    async def run(self, jobs: int, samples: int, profile: Path | None) -> None:
        gateway = await connect(self.settings("gateway"), "gateway", "bench-gateway")
        watcher = await connect(self.settings("debug"), "debug", "bench-watcher")
        js = gateway.jetstream()
        await ensure_streams(js, StreamSettings())
        ready = asyncio.Event()

        async def on_event(msg: object) -> None:
            headers = getattr(msg, "headers", None) or {}
            if headers.get(s.EVENT_TYPE_HEADER) == "finished":
                seen = utc_now()
                event = decode_event(getattr(msg, "data", b""))
                assert isinstance(event, FinishedEvent)
                started, ended = event.result.started_at, event.result.finished_at
                assert started is not None and ended is not None
                self.phases[event.job_id] = (
                    (started - self.submitted[event.job_id]).total_seconds(),
                    (ended - started).total_seconds(),
                    (seen - ended).total_seconds(),
                )
                self.finished.setdefault(event.job_id, asyncio.Event()).set()

        async def on_heartbeat(_: object) -> None:
            ready.set()

        await watcher.subscribe(s.EVENTS_ALL, cb=on_event)
        await watcher.subscribe(s.WORKERS_ALL, cb=on_heartbeat)
        worker = self.start_worker()
        try:
            await asyncio.wait_for(ready.wait(), _READY_TIMEOUT_S)
            await self._enqueue(gateway, [_job()])  # warm-up: first sandbox, first imports
            latencies, phases = [], []
            for _ in range(samples):
                job = _job()
                started = time.perf_counter()
                await self._enqueue(gateway, [job])
                latencies.append(time.perf_counter() - started)
                phases.append(self.phases[job.job_id])
            spawns = [await asyncio.to_thread(bare_spawn_s) for _ in range(samples)]
            spawn = statistics.median(spawns)
            e2e = statistics.median(latencies)
            before, inside, after = (statistics.median(p) * 1000 for p in zip(*phases, strict=True))
            print(
                f"one at a time: enqueue -> finished p50 {e2e * 1000:.2f} ms; bare python3 spawn "
                f"p50 {spawn * 1000:.2f} ms; ratio {e2e / spawn:.2f}x\n"
                f"  p50 phases: enqueued -> run started {before:.2f} ms, run {inside:.2f} ms, "
                f"judged -> finished seen {after:.2f} ms",
                flush=True,
            )
            sent0, received0 = _worker_msgs(self.monitor_url)
            cpu0 = _cpu_s(worker.pid)
            spy = _start_profile(worker.pid, profile)
            started = time.perf_counter()
            await self._enqueue(gateway, [_job() for _ in range(jobs)])
            elapsed = time.perf_counter() - started
            cpu = _cpu_s(worker.pid) - cpu0
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                spy.wait(30)
            await asyncio.sleep(0.5)  # the last acks reach the server
            sent, received = _worker_msgs(self.monitor_url)
            print(
                f"burst of {jobs} (concurrency {self.concurrency}): {jobs / elapsed:.0f} jobs/s; "
                f"worker CPU {cpu / jobs * 1000:.2f} ms/job; NATS messages per job: "
                f"{(sent - sent0) / jobs:.2f} sent, {(received - received0) / jobs:.2f} received",
                flush=True,
            )
        finally:
            worker.terminate()
            worker.wait(60)
            await gateway.close()
            await watcher.close()

    async def _enqueue(self, nc: NATS, messages: list[JobMessage]) -> None:
        """Enqueue `messages` at once and wait until every one has finished."""
        waits = [self.finished.setdefault(m.job_id, asyncio.Event()) for m in messages]
        self.submitted.update((m.job_id, m.submitted_at) for m in messages)
        outgoing = [
            Outgoing(s.job_subject(m.tenant), m.model_dump_json().encode(), m.job_id)
            for m in messages
        ]
        await publish_all(nc, outgoing)
        await asyncio.gather(*(w.wait() for w in waits))


def _start_profile(pid: int, path: Path | None) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if path is None or not Path(spy).exists():
        return None
    argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "500"]
    return subprocess.Popen([*argv, "--output", str(path)], stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crucible-bench-") as folder:
        bench = Bench(Path(folder), options.concurrency)
        server = bench.start_nats()
        try:
            asyncio.run(bench.run(options.jobs, options.samples, options.profile))
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
