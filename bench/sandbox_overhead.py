"""Per-job cost of each sandbox backend, against baselines measured in the same run.

    python -m bench.sandbox_overhead [--jobs 40] [--rounds 3]

Each variant runs the same small program `--jobs` times, one after another, `--rounds` times;
the median round gives the time per job. Ratios, not absolute times, are what to compare:
this machine is noisy, and every variant ran under the same noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

import docker

from sandbox import ExecSpec, OutputChunk, Verdict, create_sandbox
from sandbox.docker import DockerSandbox
from sandbox.docker_pool import DockerSettings

PROGRAM = "import math\nprint(sum(math.isqrt(i) for i in range(1000)))"
PYTHON = "/usr/bin/python3"
BWRAP_ALONE = [
    "bwrap",
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/bin",
    "/bin",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/work",
    "--chdir",
    "/work",
    PYTHON,
    "-I",
    "-c",
    PROGRAM,
]

Job = Callable[[], Awaitable[None]]


def subprocess_job(argv: list[str]) -> Job:
    async def job() -> None:
        await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)

    return job


def sandbox_job(sandbox: object) -> Job:
    async def ignore(chunk: OutputChunk) -> None:
        pass

    async def job() -> None:
        spec = ExecSpec(job_id="j-bench", language="python", code=PROGRAM)
        result = await sandbox.run(spec, ignore)  # type: ignore[attr-defined]
        assert result.verdict is Verdict.ACCEPTED, result

    return job


async def latency_s(job: Job, sandbox: DockerSandbox, jobs: int, rounds: int) -> float:
    await job()
    medians = []
    for _ in range(rounds):
        spent = 0.0
        for _ in range(jobs):
            await sandbox.settle()
            started = time.perf_counter()
            await job()
            spent += time.perf_counter() - started
        medians.append(spent / jobs)
    return statistics.median(medians)


async def per_job_s(job: Job, jobs: int, rounds: int) -> float:
    await job()  # warm caches once, outside the measurement
    medians = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(jobs):
            await job()
        medians.append((time.perf_counter() - started) / jobs)
    return statistics.median(medians)


async def main(jobs: int, rounds: int) -> None:
    image = DockerSettings().image
    client = docker.from_env()
    warm = client.containers.run(image, ["sleep", "infinity"], detach=True, network_mode="none")
    bwrap_backend = create_sandbox("bwrap")
    await bwrap_backend.check()
    docker_backend = DockerSandbox(DockerSettings(pool_size=2, owner="bench"))
    await docker_backend.check()
    variants = {
        "bare `python3 -I -c` (baseline)": subprocess_job([PYTHON, "-I", "-c", PROGRAM]),
        "`bwrap` alone": subprocess_job(BWRAP_ALONE),
        "Crucible bwrap backend": sandbox_job(bwrap_backend),
        "`docker run --rm` per job": subprocess_job(
            ["docker", "run", "--rm", "--network", "none", image, PYTHON, "-I", "-c", PROGRAM]
        ),
        "`docker exec` into a running container": subprocess_job(
            ["docker", "exec", warm.id, PYTHON, "-I", "-c", PROGRAM]
        ),
        "Crucible docker backend, back to back (pool drained)": sandbox_job(docker_backend),
    }
    try:
        results = {name: await per_job_s(job, jobs, rounds) for name, job in variants.items()}
        results["Crucible docker backend, latency on a warm pool"] = await latency_s(
            sandbox_job(docker_backend), docker_backend, jobs, rounds
        )
    finally:
        warm.remove(force=True)
        await docker_backend.close()
    bare = results["bare `python3 -I -c` (baseline)"]
    docker_run = results["`docker run --rm` per job"]
    print(f"{jobs} jobs x {rounds} rounds, median round; program: {PROGRAM!r}\n")
    print("| variant | ms per job | vs bare python3 | vs docker run |")
    print("|---|---|---|---|")
    for name, seconds in results.items():
        print(
            f"| {name} | {seconds * 1000:.1f} | {seconds / bare:.2f}x | "
            f"{seconds / docker_run:.2f}x |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.jobs, arguments.rounds))
