"""Where the CPU of a HumanEval run goes: each process of the stack, per job, beside a bare spawn.

    .venv/bin/python -m bench.stack_cpu [--rounds 2] [--workers 2] [--worker-concurrency 1]
    .venv/bin/python -m bench.stack_cpu --workload print1 [--jobs 200]

Starts `crucible up`, runs `crucible eval` of the 164 canonical solutions once to warm it,
then `--rounds` times, and reads from /proc the CPU time (user + system, with that of the
children each process has reaped: a fork server's jobs, a worker's subprocesses) that every
process of the stack used in the round, and this process's own (the eval client). Then the
same 164 programs as bare `/usr/bin/python3 -I -c` subprocesses, one after another, and their
CPU. Wall time alone says whether the run waits or computes; this says on what. With
`--workload print1`, a round is `make bench`'s `print(1)` latency loop instead (one job at a
time: POST, then its SSE stream to `finished`), beside bare spawns of `print(1)`.

The medians are printed per kind of process, in ms per job, and as the cores the stack kept
busy (CPU time over wall time): a run near the core count is bound by CPU, so only doing
less per job makes it faster; one well below it is bound by waiting.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.humaneval_canonical import PYTHON, TIMEOUT_S, canonical_programs
from bench.pipeline import end_to_end_s
from bench.results import positive
from crucible.client import Client
from crucible.evaluate import evaluate, write_canonical_samples
from sandbox.cgroups import CGROUP_ROOT, PARENT
from tests.stack import Stack, start_stack

Round = Callable[[], object]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_FORK_SERVER = "fork server (with its jobs)"
# Every job cgroup's CPU, the removed ones' included (cpuacct charges each ancestor too).
_JOB_CGROUPS_USAGE = CGROUP_ROOT / "cpuacct" / PARENT / "cpuacct.usage"
# What a process is, from its command line: the first needle found names its kind.
_KINDS = (
    ("nats-server", "nats-server"),
    ("crucible gateway", "gateway"),
    ("crucible worker", "worker"),
    ("-E -s -u -", _FORK_SERVER),
)


def _processes() -> dict[int, tuple[int, str, float]]:
    """Every process: pid -> (parent pid, command line, CPU seconds incl. reaped children)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), counted from 1.
        cpu_s = sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS
        found[int(entry.name)] = (int(fields[1]), command, cpu_s)
    return found


def stack_cpu_s(root: int) -> dict[str, float]:
    """CPU seconds so far of every process under `root`, summed per kind.

    A process takes the kind of its nearest ancestor that has one (a fork server's jobs are
    the fork server's, a worker's bwrap the worker's). A child reaped during a round shows in
    its parent's figure, in whole, and no more in its own: the difference over a round counts
    every process once.
    """
    processes = _processes()
    per_kind: dict[str, float] = defaultdict(float)
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _, _) in processes.items():
        children[parent].append(pid)
    pending: list[tuple[int, str | None]] = [(child, None) for child in children[root]]
    while pending:
        pid, inherited = pending.pop()
        _, command, cpu_s = processes[pid]
        kind = next((name for needle, name in _KINDS if needle in command), inherited)
        if kind is not None:
            per_kind[kind] += cpu_s
        pending += [(child, kind) for child in children[pid]]
    return per_kind


def job_cgroups_cpu_s() -> float:
    """CPU seconds so far of every job cgroup on the machine, the removed ones' included.

    The fork server's jobs are reaped by the kernel (it ignores SIGCHLD), so their CPU is in
    no process's figure: it is in their cgroups'. Jobs of other stacks on the machine count
    too, and so would this stack's jobs on the classic path, which its worker reaps (counted
    twice then): the workloads here are Python, all on the fork server, on a machine of
    their own.
    """
    try:
        return int(_JOB_CGROUPS_USAGE.read_text()) / 1e9
    except FileNotFoundError:
        return 0.0  # no job ran on this machine yet


def _cpu_s(root: int) -> dict[str, float]:
    spent = stack_cpu_s(root)
    spent[_FORK_SERVER] += job_cgroups_cpu_s()
    return spent


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_cpu_ms_per_job(programs: list[str]) -> float:
    """CPU per program of bare `python3 -I -c` subprocesses, one after another."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for program in programs:
        subprocess.run([PYTHON, "-I", "-c", program], capture_output=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return spent_s / len(programs) * 1000


def _workload(options: argparse.Namespace, stack: Stack, work: Path) -> tuple[list[str], Round]:
    """The programs one round runs, and how to run a round."""
    if options.workload == "print1":

        def one_at_a_time() -> None:
            with httpx.Client(headers=stack.headers(), timeout=60) as client:
                for _ in range(options.jobs):
                    end_to_end_s(client, stack)

        return ["print(1)"] * options.jobs, one_at_a_time
    samples = work / "samples.jsonl"
    write_canonical_samples(samples)

    def run() -> None:
        with Client(stack.url, stack.api_key) as client:
            evaluate(client, samples, ks=(1,), timeout_s=TIMEOUT_S)

    return canonical_programs(), run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=2)
    parser.add_argument("--workers", type=positive, default=2)
    parser.add_argument("--worker-concurrency", type=positive, default=1)
    parser.add_argument("--workload", choices=("humaneval", "print1"), default="humaneval")
    parser.add_argument("--jobs", type=positive, default=200, help="of print1, per round")
    options = parser.parse_args()
    rounds: dict[str, list[float]] = defaultdict(list)
    walls, cores = [], []
    with tempfile.TemporaryDirectory(prefix="crucible-bench-", ignore_cleanup_errors=True) as work:
        (Path(work) / "stack").mkdir()
        stack = start_stack(
            Path(work) / "stack",
            workers=options.workers,
            worker_concurrency=options.worker_concurrency,
            # The print(1) loop makes two requests per job, back to back: the default rate
            # limit (100/s, bursts of 200) would refuse its rounds, not measure them.
            env={
                "CRUCIBLE_RATE_LIMIT__BURST": "100000",
                "CRUCIBLE_RATE_LIMIT__REQUESTS_PER_S": "1e5",
            },
        )
        try:
            programs, run = _workload(options, stack, Path(work))
            count = len(programs)
            run()  # warm
            for number in range(1, options.rounds + 1):
                before, own = _cpu_s(stack.process.pid), _own_cpu_s()
                started = time.perf_counter()
                run()
                wall_s = time.perf_counter() - started
                after = _cpu_s(stack.process.pid)
                spent = {kind: after[kind] - before.get(kind, 0.0) for kind in after}
                spent["client"] = _own_cpu_s() - own
                for kind, cpu_s in spent.items():
                    rounds[kind].append(cpu_s / count * 1000)
                walls.append(wall_s)
                cores.append(sum(spent.values()) / wall_s)
                print(f"round {number}: {wall_s:.2f} s, {cores[-1]:.2f} cores busy", flush=True)
        finally:
            stack.stop()
    bare_ms = bare_cpu_ms_per_job(programs)
    total_ms = sum(statistics.median(values) for values in rounds.values())
    what = (
        "print(1) jobs, one at a time"
        if options.workload == "print1"
        else "canonical HumanEval solutions"
    )
    print(f"\n{count} {what}, {options.workers} workers x "
          f"{options.worker_concurrency} slots: {statistics.median(walls):.2f} s, "
          f"{statistics.median(cores):.2f} cores busy (medians of {options.rounds})\n")  # fmt: skip
    print("| process | CPU per job |\n|---|---|")
    for kind, values in sorted(rounds.items(), key=lambda item: -statistics.median(item[1])):
        print(f"| {kind} | {statistics.median(values):.1f} ms |")
    print(f"| **the stack, all of it** | **{total_ms:.1f} ms** |")
    print(f"| bare `python3 -I -c` of the same program (baseline) | {bare_ms:.1f} ms |")


if __name__ == "__main__":
    main()
