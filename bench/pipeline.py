"""The pipeline around the sandbox, each against a baseline measured in the same run.

    .venv/bin/python -m bench.pipeline [--rounds 3] [--samples 30] [--jobs 2000] [--clients 1000]
                                       [--only e2e|accept|fanout]

1. `print(1)` end to end (POST /v1/jobs -> SSE `finished`), p50, against one bare
   `/usr/bin/python3 -I -c 'print(1)'` spawn, p50.
2. Jobs accepted per second through `POST /v1/runs` (validated, recorded, stored in
   JetStream), against raw nats-py JetStream publishes of the same messages to a scratch
   nats-server on the same machine.
3. Many concurrent SSE clients on one gateway following one job that prints a line every
   0.1 s: p99 delivery delay (stored -> received) and the gateway's RSS.

Medians over `--rounds`; the machine is noisy, so only the ratios mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import nats
from nats.js import api

from crucible.up import nats_server_binary
from tests.stack import Stack, free_port, start_stack, wait_for_port

PRINT_ONE = {"language": "python", "code": "print(1)"}
TICKER = {
    "language": "python",
    "code": "import time\nfor i in range(50):\n    print(i, flush=True)\n    time.sleep(0.1)\n",
    "limits": {"wall_time_s": 30},
}


TICKER_OUTPUT = "".join(f"{i}\n" for i in range(50))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_spawn_p50(samples: int) -> float:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        subprocess.run(
            ["/usr/bin/python3", "-I", "-c", "print(1)"], capture_output=True, check=True
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def end_to_end_p50(stack: Stack, samples: int) -> float:
    times = []
    with httpx.Client(headers=stack.headers(), timeout=60) as client:
        for _ in range(samples):
            started = time.perf_counter()
            accepted = client.post(f"{stack.url}/v1/jobs", json=PRINT_ONE).json()
            with client.stream("GET", accepted["events_url"]) as events:
                for line in events.iter_lines():
                    if line == "event: finished":
                        break
            times.append(time.perf_counter() - started)
    return statistics.median(times)


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


async def fan_out(stack: Stack, clients: int) -> tuple[float, float, int]:
    """p99 delivery delay (s), gateway RSS (MiB), and how many clients got every line."""
    async with httpx.AsyncClient(headers=stack.headers(), timeout=120) as client:
        accepted = (await client.post(f"{stack.url}/v1/jobs", json=TICKER)).json()
    delays: list[float] = []
    complete = 0
    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as streams:

        async def follow() -> None:
            nonlocal complete
            output = ""
            async with streams.stream("GET", accepted["events_url"]) as response:
                response.raise_for_status()
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "stdout":
                        data = json.loads(line[6:])
                        sent = datetime.fromisoformat(data["time"]).timestamp()
                        delays.append(time.time() - sent)
                        output += data["data"]  # a chunk may hold several lines
                    elif line.startswith("data: ") and event == "finished":
                        break
            complete += output == TICKER_OUTPUT

        followers = [asyncio.create_task(follow()) for _ in range(clients)]
        await asyncio.sleep(2)
        rss = gateway_rss_mib(stack)
        await asyncio.gather(*followers)
    return percentile(delays, 0.99), rss, complete


def gateway_rss_mib(stack: Stack) -> float:
    (pid,) = stack.processes("crucible gateway")
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
        / 1024
    )


PARTS = ("e2e", "accept", "fanout")


def print_one(stack: Stack, options: argparse.Namespace) -> None:
    spawn = statistics.median(bare_spawn_p50(options.samples) for _ in range(options.rounds))
    e2e = statistics.median(end_to_end_p50(stack, options.samples) for _ in range(options.rounds))
    print(
        f"print(1) end to end p50: {e2e * 1000:.1f} ms; bare python3 spawn p50: "
        f"{spawn * 1000:.1f} ms; ratio {e2e / spawn:.2f}x (goal <= 1.0x)",
        flush=True,
    )


def accept(stack: Stack, options: argparse.Namespace) -> None:
    payload = json.dumps({"job_id": "j-" + "0" * 32, "spec": PRINT_ONE}).encode()
    ours = statistics.median(accept_rate(stack, options.jobs) for _ in range(options.rounds))
    raw = statistics.median(
        asyncio.run(raw_publish_rate(options.jobs, payload)) for _ in range(options.rounds)
    )
    print(
        f"POST /v1/runs: {ours:,.0f} jobs/s accepted; raw nats-py publishes: {raw:,.0f}/s; "
        f"ratio {ours / raw:.2f}x (goal >= 0.5x)",
        flush=True,
    )


def sse_clients(stack: Stack, options: argparse.Namespace) -> None:
    p99, rss, complete = asyncio.run(fan_out(stack, options.clients))
    print(
        f"{options.clients} SSE clients on one gateway: p99 delivery {p99 * 1000:.0f} ms "
        f"(goal < 250 ms), gateway RSS {rss:.0f} MiB (goal < 300 MiB), "
        f"{complete}/{options.clients} clients got the whole output",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=PARTS, help="run only this part")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crucible-bench-") as folder:
        # Rate limits off: a thousand clients opening streams at once is the point here.
        unlimited = {
            "CRUCIBLE_RATE_LIMIT__BURST": "1000000",
            "CRUCIBLE_RATE_LIMIT__REQUESTS_PER_S": "1e6",
        }
        stack = start_stack(Path(folder), workers=options.workers, env=unlimited)
        try:
            for part, run in zip(PARTS, (print_one, accept, sse_clients), strict=True):
                if options.only in (None, part):
                    run(stack, options)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
