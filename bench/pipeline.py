"""The pipeline around the sandbox, each against a baseline measured in the same run.

    .venv/bin/python -m bench.pipeline [--rounds 3] [--samples 30] [--jobs 2000] [--clients 1000]
                                       [--only latency accept fanout] [--json PATH]

1. `print(1)` end to end (POST /v1/jobs -> SSE `finished`), p50, against one bare
   `/usr/bin/python3 -I -c 'print(1)'` spawn, p50; and, as context, the same in one
   request (POST /v1/jobs with `Accept: text/event-stream`, answered with the job's stream).
2. Jobs accepted per second through `POST /v1/runs` (validated, recorded, stored in
   JetStream), against raw nats-py JetStream publishes of the same messages to a scratch
   nats-server on the same machine.
3. Many concurrent SSE clients on one gateway following one job that prints a line every
   0.1 s: p99 delivery delay (stored -> received) and the gateway's RSS. The job starts once
   every client is connected (the workers are held until then), so that the delays are
   those of live delivery, not of a replay to a client still connecting. The clients are
   `bench.sse_clients` (each read noted with its time, parsed after the job), so that
   their CPU takes little from the gateway's on the same cores; the step lines show both
   CPU costs per frame, and per line the worst first delivery and first-to-last spread.

Medians over `--rounds` (for part 1, each round measures the spawns and both paths in turn;
for part 3, a fresh ticker job and client set each round); the machine is noisy, so only the
ratios mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import uvloop
from nats.js import api

from bench import sse_clients
from bench.results import Figure, Goal, Recorder, Row, add_arguments
from bench.stack_errors import distinct_errors
from crucible.up import nats_server_binary
from tests.stack import Stack, free_port, start_stack, wait_for_port

PRINT_ONE = {"language": "python", "code": "print(1)"}
TICKER = {
    "language": "python",
    "code": "import time\nfor i in range(50):\n    print(i, flush=True)\n    time.sleep(0.1)\n",
    "limits": {"wall_time_s": 30},
}
# Keeps a worker slot busy until cancelled.
HOLD = {"language": "python", "code": "import time\ntime.sleep(55)", "limits": {"wall_time_s": 60}}


TICKER_OUTPUT = "".join(f"{i}\n" for i in range(50))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_spawn_s() -> float:
    started = time.perf_counter()
    subprocess.run(["/usr/bin/python3", "-I", "-c", "print(1)"], capture_output=True, check=True)
    return time.perf_counter() - started


def end_to_end_s(client: httpx.Client, stack: Stack) -> float:
    """POST the job, then follow its `events_url` to `finished`."""
    started = time.perf_counter()
    accepted = client.post(f"{stack.url}/v1/jobs", json=PRINT_ONE).json()
    with client.stream("GET", accepted["events_url"]) as events:
        for line in events.iter_lines():
            if line == "event: finished":
                break
    return time.perf_counter() - started


def streamed_s(client: httpx.Client, stack: Stack) -> float:
    """As `end_to_end_s`, with the job's events in the POST's own answer."""
    started = time.perf_counter()
    headers = {"Accept": "text/event-stream"}
    with client.stream("POST", f"{stack.url}/v1/jobs", json=PRINT_ONE, headers=headers) as events:
        for line in events.iter_lines():
            if line == "event: finished":
                break
    return time.perf_counter() - started


def latency_round(stack: Stack, samples: int) -> tuple[float, float, float]:
    """p50s (s) of a bare spawn, the two-request and the one-request path: `samples` of each,
    one kind after the other, within seconds (the machine's speed moves by the minute).

    Not interleaved sample by sample: what the stack does after a job (the next sandbox
    built, the job's cgroup emptied, acks) would then overlap the bare spawn that follows
    instead of the next job, and in one run made the spawns 1-3 ms slower and the jobs 2 ms
    faster than each measured in a row (0.85x instead of 1.1x)."""
    with httpx.Client(headers=stack.headers(), timeout=60) as client:
        spawns = [bare_spawn_s() for _ in range(samples)]
        jobs = [end_to_end_s(client, stack) for _ in range(samples)]
        streamed = [streamed_s(client, stack) for _ in range(samples)]
    return statistics.median(spawns), statistics.median(jobs), statistics.median(streamed)


def accept_rate(stack: Stack, jobs: int) -> float:
    """Jobs per second through POST /v1/runs; the run is cancelled at once to spare the CPU."""
    body = {"jobs": [PRINT_ONE] * jobs}
    with httpx.Client(headers=stack.headers(), timeout=300) as client:
        started = time.perf_counter()
        response = client.post(f"{stack.url}/v1/runs", json=body)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        client.post(f"{stack.url}/v1/runs/{response.json()['id']}/cancel")
    return jobs / elapsed


async def raw_publish_rate(jobs: int, payload: bytes) -> float:
    """nats-py JetStream publishes, pipelined, to a scratch nats-server: the floor."""
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        server = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            *("-js", "-p", str(port), "-sd", store),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.to_thread(wait_for_port, port)
            nc = await nats.connect(f"nats://127.0.0.1:{port}")
            js = nc.jetstream()
            await js.add_stream(api.StreamConfig(name="RAW", subjects=["raw.>"]))
            started = time.perf_counter()
            futures = [
                await js.publish_async("raw.jobs", payload, headers={"Nats-Msg-Id": str(i)})
                for i in range(jobs)
            ]
            await asyncio.gather(*futures)
            elapsed = time.perf_counter() - started
            await nc.close()
        finally:
            server.terminate()
            await server.wait()
    return jobs / elapsed


@dataclass
class FanOut:
    p99_live_s: float  # events stored while the client was connected
    live: int
    p99_all_s: float  # every event, replayed ones too
    rss_mib: float
    complete: int
    client_cpu_us: float  # per frame, while the job ran: what measuring cost the machine
    gateway_cpu_us: float  # per frame, while the job ran
    # Per line of output, over the lines: its first client's delay (the way to the gateway
    # and its first write), and the time from its first client to its last (the fan-out).
    worst_first_s: float
    worst_spread_s: float


async def hold_workers(client: httpx.AsyncClient, stack: Stack, workers: int) -> list[str]:
    """Every worker slot busy with a HOLD job (their URLs), so that the next job waits."""
    for _ in range(600):  # until the gateway has heard from every worker
        gauges = {
            name: float(value)
            for name, _, value in (
                line.partition(" ")
                for line in (await client.get(f"{stack.url}/metrics")).text.splitlines()
            )
            if name in ("crucible_workers", "crucible_worker_slots_total")
        }
        if gauges.get("crucible_workers") == workers:
            break
        await asyncio.sleep(0.1)
    slots = int(gauges["crucible_worker_slots_total"])
    holds = [
        (await client.post(f"{stack.url}/v1/jobs", json=HOLD)).json()["url"] for _ in range(slots)
    ]
    for url in holds:
        for _ in range(600):
            if (await client.get(url)).json()["status"] == "running":
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"{url} did not start within a minute")
    return holds


async def fan_out(stack: Stack, clients: int, workers: int) -> FanOut:
    """Delivery delays, gateway RSS (MiB), how many clients got every line, and CPU per frame."""
    async with httpx.AsyncClient(headers=stack.headers(), timeout=120) as client:
        holds = await hold_workers(client, stack, workers)
        accepted = (await client.post(f"{stack.url}/v1/jobs", json=TICKER)).json()
    connected_all = asyncio.Event()
    connected = 0

    def on_response() -> None:
        nonlocal connected
        connected += 1
        if connected == clients:
            connected_all.set()

    followers = [
        asyncio.create_task(sse_clients.follow(accepted["events_url"], on_response))
        for _ in range(clients)
    ]
    await _until(connected_all, followers)
    (gateway,) = stack.processes("crucible gateway")
    client_cpu, gateway_cpu = time.process_time(), _cpu_s(gateway)
    async with httpx.AsyncClient(headers=stack.headers(), timeout=120) as client:
        for url in holds:  # the job starts now
            await client.post(f"{url}/cancel")
    await asyncio.sleep(2)
    rss = gateway_rss_mib(stack)
    streams = await asyncio.wait_for(asyncio.gather(*followers), _STREAMS_TIMEOUT_S)
    client_cpu, gateway_cpu = time.process_time() - client_cpu, _cpu_s(gateway) - gateway_cpu
    delays: list[float] = []
    live: list[float] = []
    by_event: dict[float, list[float]] = {}
    complete = frames = 0
    for received in streams:
        output = ""
        connected_at = received.connected_at
        for received_at, frame in received.frames():
            frames += 1
            if b"\r\nevent: stdout\r\n" in frame:
                data = json.loads(frame[frame.index(b"data: ") + 6 :])
                sent = datetime.fromisoformat(data["time"]).timestamp()
                delays.append(received_at - sent)
                by_event.setdefault(sent, []).append(delays[-1])
                if sent >= connected_at:
                    live.append(delays[-1])
                output += data["data"]  # a chunk may hold several lines
            elif b"\r\nevent: finished\r\n" in frame:
                complete += output == TICKER_OUTPUT
    return FanOut(
        percentile(live, 0.99),
        len(live),
        percentile(delays, 0.99),
        rss,
        complete,
        client_cpu / frames * 1e6,
        gateway_cpu / frames * 1e6,
        max(min(each) for each in by_event.values()),
        max(max(each) - min(each) for each in by_event.values()),
    )


_STREAMS_TIMEOUT_S = 120.0


async def _until(event: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
    """Until `event` is set; a task that fails first (a client refused) raises its error."""
    waiting = asyncio.create_task(event.wait())
    try:
        while not event.is_set():
            done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {waiting}:
                task.result()
                raise sse_clients.StreamError("a stream ended before every client was connected")
    finally:
        waiting.cancel()


def _cpu_s(pid: int) -> float:
    """The process's user and system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway_rss_mib(stack: Stack) -> float:
    (pid,) = stack.processes("crucible gateway")
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
        / 1024
    )


PARTS = ("latency", "accept", "fanout")
_PROBLEM_CHARS = 120


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, rounds=3)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=PARTS, nargs="+", default=list(PARTS))
    options = parser.parse_args()
    recorder = Recorder("pipeline", vars(options) | {"json": str(options.json)})
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="crucible-bench-") as folder:
        # Rate limits off: a thousand clients opening streams at once is the point here.
        unlimited = {
            "CRUCIBLE_RATE_LIMIT__BURST": "1000000",
            "CRUCIBLE_RATE_LIMIT__REQUESTS_PER_S": "1e6",
        }
        recorder.step(f"starting crucible up with {options.workers} workers")
        stack = start_stack(Path(folder), workers=options.workers, env=unlimited)
        parts: dict[str, Callable[[], list[Row]]] = {
            "latency": lambda: latency_rows(stack, options, recorder),
            "accept": lambda: [accept_row(stack, options, recorder)],
            "fanout": lambda: fanout_rows(stack, options, recorder),
        }
        try:
            for part in options.only:
                rows += run_part(part, parts[part], stack, recorder)
        finally:
            stack.stop()
    recorder.finish(rows, options.json)


def run_part(
    name: str, part: Callable[[], list[Row]], stack: Stack, recorder: Recorder
) -> list[Row]:
    """The part's rows; if it breaks, one row that says how, so that the other parts still count."""
    try:
        return part()
    except Exception as exc:
        traceback.print_exc()
        report_errors(f"{name} failed", stack, recorder)
        return [Row(benchmark=f"pipeline: {name}", problem=f"failed: {brief(exc)}")]


def _rounds(
    recorder: Recorder, what: str, rounds: int, measure: Callable[[], float]
) -> list[float]:
    figures = []
    for number in range(1, rounds + 1):
        figures.append(measure())
        recorder.step(f"{what}, round {number}/{rounds}: {figures[-1]:,.1f}")
    return figures


def latency_rows(stack: Stack, options: argparse.Namespace, recorder: Recorder) -> list[Row]:
    spawn_ms: list[float] = []
    e2e_ms: list[float] = []
    streamed_ms: list[float] = []
    for number in range(1, options.rounds + 1):
        figures = [p50 * 1000 for p50 in latency_round(stack, options.samples)]
        for kept, figure in zip((spawn_ms, e2e_ms, streamed_ms), figures, strict=True):
            kept.append(figure)
        recorder.step(
            f"print(1) p50 (ms), round {number}/{options.rounds}: bare spawn {figures[0]:,.1f}, "
            f"end to end {figures[1]:,.1f}, in one request {figures[2]:,.1f}"
        )
    spawn = Figure(label="one bare `python3 -I -c` spawn", unit="ms", rounds=spawn_ms)
    return [
        Row(
            benchmark=f"`print(1)` end to end, POST -> SSE `finished`, p50 of {options.samples}",
            crucible=Figure(label="end to end", unit="ms", rounds=e2e_ms),
            baseline=spawn,
            goal=Goal(on="ratio", relation="<=", limit=1.0, wording="no slower"),
        ),
        Row(
            benchmark="`print(1)` end to end in one request, POST with `Accept: "
            f"text/event-stream` -> `finished`, p50 of {options.samples} (context, no goal)",
            crucible=Figure(label="end to end, one request", unit="ms", rounds=streamed_ms),
            baseline=spawn,
        ),
    ]


def accept_row(stack: Stack, options: argparse.Namespace, recorder: Recorder) -> Row:
    payload = json.dumps({"job_id": "j-" + "0" * 32, "spec": PRINT_ONE}).encode()
    ours = _rounds(
        recorder, "POST /v1/runs jobs/s", options.rounds, lambda: accept_rate(stack, options.jobs)
    )
    raw = _rounds(
        recorder,
        "raw nats-py publishes/s",
        options.rounds,
        lambda: asyncio.run(raw_publish_rate(options.jobs, payload)),
    )
    return Row(
        benchmark=f"jobs accepted per second, `POST /v1/runs` of {options.jobs:,}",
        crucible=Figure(label="POST /v1/runs", unit="jobs/s", rounds=ours),
        baseline=Figure(
            label="raw nats-py JetStream publishes, pipelined", unit="jobs/s", rounds=raw
        ),
        goal=Goal(on="ratio", relation=">=", limit=0.5),
    )


def brief(exc: BaseException) -> str:
    """The exception's type and first line, short enough for a table cell."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    # httpx's status errors go on with the URL, the stream's token and all.
    text = f"{type(exc).__name__}: {first.split(' for url ')[0]}"
    return text if len(text) <= _PROBLEM_CHARS else text[: _PROBLEM_CHARS - 3] + "..."


def report_errors(what: str, stack: Stack, recorder: Recorder) -> None:
    errors = distinct_errors(stack.log())
    recorder.step(f"{what}; the stack logged: " + ("\n  ".join(["", *errors]) or "no error"))


def fanout_rows(stack: Stack, options: argparse.Namespace, recorder: Recorder) -> list[Row]:
    p99s, rsses, short = [], [], []
    for number in range(1, options.rounds + 1):
        try:
            result = uvloop.run(fan_out(stack, options.clients, options.workers))
            p99, rss, complete = result.p99_live_s, result.rss_mib, result.complete
        except Exception as exc:  # one client's broken stream ends the round, not the others
            short.append(f"round {number} broke: {brief(exc)}")
            report_errors(f"{options.clients} SSE clients, round {number} broke", stack, recorder)
            continue
        p99s.append(p99 * 1000)
        rsses.append(rss)
        if complete < options.clients:
            short.append(f"{complete}/{options.clients} got everything in round {number}")
        recorder.step(
            f"{options.clients} SSE clients, round {number}/{options.rounds}: p99 delivery "
            f"{p99 * 1000:,.0f} ms ({result.live:,} live deliveries), gateway RSS {rss:.0f} MiB, "
            f"{complete} got the whole output; CPU per frame: clients "
            f"{result.client_cpu_us:.1f} us, gateway {result.gateway_cpu_us:.1f} us; worst line: "
            f"first client {result.worst_first_s * 1000:,.0f} ms, first to last "
            f"{result.worst_spread_s * 1000:,.0f} ms"
        )
    problem = "; ".join(short) or None
    benchmark = f"{options.clients:,} concurrent SSE clients on one gateway"
    return [
        Row(
            benchmark=f"{benchmark}: p99 delivery",
            crucible=Figure(label="stored -> received", unit="ms", rounds=p99s) if p99s else None,
            goal=Goal(on="crucible", relation="<", limit=250, unit="ms"),
            problem=problem,
        ),
        Row(
            benchmark=f"{benchmark}: gateway RSS",
            crucible=Figure(label="VmRSS, 2 s in", unit="MiB", rounds=rsses) if rsses else None,
            goal=Goal(on="crucible", relation="<", limit=300, unit="MiB"),
            problem=problem,
        ),
    ]


if __name__ == "__main__":
    main()
