"""Per-job cost of each sandbox backend, against baselines measured in the same run.

    python -m bench.sandbox_overhead [--jobs 40] [--rounds 3] [--json PATH]

Each variant runs the same small program `--jobs` times, one after another, `--rounds` times;
each round gives a time per job, and the median round is the figure. Ratios, not absolute
times, are what to compare: this machine is noisy, and every variant ran under the same noise.
Issue 10's goal is the Docker backend's latency on a warm pool (the pool refilled before each
job, as a job arriving at an idle worker finds it) against `docker run` per job. Without a
Docker engine the Docker variants are skipped and say so; the bwrap ones still run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

import docker

from bench.results import Figure, Goal, Recorder, Row, add_arguments
from sandbox import ExecSpec, OutputChunk, SandboxUnavailableError, Verdict
from sandbox.bwrap import BwrapSandbox
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
BARE = "bare `python3 -I -c` (baseline)"
BWRAP_BACKEND = "Crucible bwrap backend (fork server)"
BWRAP_CLASSIC = "Crucible bwrap backend, a fresh bwrap per job (CRUCIBLE_BWRAP_FORK_SERVER=0)"
DOCKER_RUN = "`docker run --rm` per job"
DOCKER_WARM = "Crucible docker backend, latency on a warm pool"
_ENGINE_PROBE_S = 5

Job = Callable[[], Awaitable[None]]
Before = Callable[[], Awaitable[None]]


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


async def _nothing() -> None:
    pass


async def per_job_s(job: Job, jobs: int, rounds: int, before: Before = _nothing) -> list[float]:
    """Seconds per job in each round; `before` runs ahead of every job, untimed."""
    await job()  # warm caches once, outside the measurement
    per_round = []
    for _ in range(rounds):
        spent_s = 0.0
        for _ in range(jobs):
            await before()
            started = time.perf_counter()
            await job()
            spent_s += time.perf_counter() - started
        per_round.append(spent_s / jobs)
    return per_round


def docker_variants(
    backend: DockerSandbox, warm_id: str, image: str
) -> dict[str, tuple[Job, Before]]:
    """The Docker variants; `warm_id` is the running container `docker exec` goes into."""
    run = ["docker", "run", "--rm", "--network", "none", image, PYTHON, "-I", "-c", PROGRAM]
    return {
        DOCKER_RUN: (subprocess_job(run), _nothing),
        "`docker exec` into a running container": (
            subprocess_job(["docker", "exec", warm_id, PYTHON, "-I", "-c", PROGRAM]),
            _nothing,
        ),
        "Crucible docker backend, back to back (pool drained)": (sandbox_job(backend), _nothing),
        DOCKER_WARM: (sandbox_job(backend), backend.settle),
    }


async def docker_unusable(backend: DockerSandbox) -> str | None:
    """Why the Docker variants cannot run here ("no engine", a missing image), or None."""
    try:
        await asyncio.to_thread(lambda: docker.from_env(timeout=_ENGINE_PROBE_S).ping())
    except Exception:  # the SDK and requests raise unrelated types for "nothing listens"
        return "no engine"
    try:
        await backend.check()
    except SandboxUnavailableError as exc:
        return f"{exc} (make image)"
    return None


async def measure(
    jobs: int, rounds: int, recorder: Recorder
) -> tuple[dict[str, list[float]], str | None]:
    """Seconds per job of every variant, round by round; why Docker was skipped, if it was."""
    bwrap_backend = BwrapSandbox(fork_server=True)
    classic_backend = BwrapSandbox(fork_server=False)
    for backend in (bwrap_backend, classic_backend):
        await backend.check()
    variants: dict[str, tuple[Job, Before]] = {
        BARE: (subprocess_job([PYTHON, "-I", "-c", PROGRAM]), _nothing),
        "`bwrap` alone": (subprocess_job(BWRAP_ALONE), _nothing),
        BWRAP_CLASSIC: (sandbox_job(classic_backend), _nothing),
        BWRAP_BACKEND: (sandbox_job(bwrap_backend), _nothing),
    }
    image = DockerSettings().image
    docker_backend = DockerSandbox(DockerSettings(pool_size=2, owner="bench"))
    engine = warm = None
    skipped = await docker_unusable(docker_backend)
    if skipped is not None:
        recorder.step(f"Docker variants skipped: {skipped}")
    else:
        engine = docker.from_env()
        warm = engine.containers.run(image, ["sleep", "infinity"], detach=True, network_mode="none")
        variants |= docker_variants(docker_backend, warm.id, image)
    results = {}
    try:
        for name, (job, before) in variants.items():
            results[name] = await per_job_s(job, jobs, rounds, before)
            rounds_ms = ", ".join(f"{s * 1000:.1f}" for s in results[name])
            recorder.step(
                f"{name}: {statistics.median(results[name]) * 1000:.1f} ms per job "
                f"(rounds: {rounds_ms})"
            )
    finally:
        if warm is not None:
            warm.remove(force=True)
        if engine is not None:
            engine.close()
        await docker_backend.close()
        for backend in (bwrap_backend, classic_backend):
            await backend.close()
    return results, skipped


def _figure(label: str, seconds: list[float]) -> Figure:
    return Figure(label=label, unit="ms", rounds=[s * 1000 for s in seconds])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, rounds=3)
    parser.add_argument("--jobs", type=int, default=40, help="jobs per round (default 40)")
    options = parser.parse_args()
    recorder = Recorder("sandbox_overhead", {"jobs": options.jobs, "rounds": options.rounds})
    recorder.step(f"{options.jobs} jobs x {options.rounds} rounds per variant of {PROGRAM!r}")
    results, skipped = asyncio.run(measure(options.jobs, options.rounds, recorder))
    medians = {name: statistics.median(seconds) for name, seconds in results.items()}
    print("\n| variant | ms per job | vs bare python3 | vs docker run |\n|---|---|---|---|")
    for name, seconds in medians.items():
        versus_run = f"{seconds / medians[DOCKER_RUN]:.2f}x" if DOCKER_RUN in medians else "-"
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / medians[BARE]:.2f}x | {versus_run} |")
    docker_row = Row(
        benchmark="Docker backend (warm pool), per-job latency",
        goal=Goal(on="ratio", relation="<=", limit=1 / 3, wording="at least 3x faster"),
        skipped=skipped,
    )
    if skipped is None:
        docker_row.crucible = _figure("warm pool", results[DOCKER_WARM])
        docker_row.baseline = _figure("`docker run --rm` per job", results[DOCKER_RUN])
    rows = [
        docker_row,
        Row(
            benchmark="bwrap backend (fork server), per job, one after another",
            crucible=_figure("bwrap backend", results[BWRAP_BACKEND]),
            baseline=_figure("bare `python3 -I -c`", results[BARE]),
            note="context, no goal",
        ),
        Row(
            benchmark="bwrap backend, fork server vs a fresh bwrap per job",
            crucible=_figure("fork server", results[BWRAP_BACKEND]),
            baseline=_figure("a fresh bwrap and interpreter per job", results[BWRAP_CLASSIC]),
            note="context, no goal",
        ),
    ]
    details = {
        name: {"ms_per_job": medians[name] * 1000, "rounds_ms": [s * 1000 for s in seconds]}
        for name, seconds in results.items()
    }
    recorder.finish(rows, options.json, details={"program": PROGRAM, "variants": details})


if __name__ == "__main__":
    main()
