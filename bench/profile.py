"""Where the gateway's and the workers' time goes while the 164 canonical HumanEval samples run.

    .venv/bin/python -m bench.profile [--rounds 3] [--rate 100] [--top 15] [--out bench-output]

Starts `crucible up` (2 workers), runs one job, attaches `py-spy record` to the gateway, to
every worker and to any Python process a worker keeps under it (a fork server, recorded with
the processes it forks: `--subprocesses`), runs `crucible eval` of the canonical solutions
`--rounds` times through the stack, stops py-spy, and prints, per kind of process, the
functions with the most inclusive time (the share of that kind's samples with the function
anywhere on the stack) and their own (leaf) share. Choices, and why:

- `--gil`: only samples of a thread holding the GIL, i.e. Python running on a CPU. Without
  it, threads parked in a `Condition.wait` (thread pools) count as busy and fill the table.
- `--nonblocking`: py-spy reads the process without pausing it. Pausing (its default) made
  an eval round about half again as slow here, which would distort the path measured.
- Each sample is cut below the frames every sample of its thread shares (`runpy`, the CLI,
  `asyncio.run`, `_run_once`) and below the last `Handle._run`, where the event loop calls a
  callback or a task's step: the tables show what ran, not how the loop got there.

The same tables go to `<out>/profile.md`, py-spy's raw (collapsed stack) files to
`<out>/profile-raw/` for a flame graph.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.humaneval_canonical import crucible_round
from bus import JobSpec
from crucible.client import Client
from crucible.evaluate import write_canonical_samples
from tests.stack import Stack, start_stack

_ATTACH_S = 1.0  # py-spy reads the target's memory maps before its first sample
_LONG_LIVED_S = 1.0  # a Python process under a worker that lasts this long is not a job
_LOOP_DISPATCH = "Handle._run (asyncio/events.py)"
_PROCESS_FRAME = re.compile(r"process \d+:")  # how py-spy --subprocesses starts each stack
FORK_SERVER = "fork server (in the sandbox, with the processes it forks)"
Frames = tuple[str, ...]


def _common_prefix(stacks: list[Frames]) -> Frames:
    shortest = min(len(s) for s in stacks)
    depth = 0
    while depth < shortest and all(s[depth] == stacks[0][depth] for s in stacks):
        depth += 1
    return stacks[0][:depth]


@dataclass
class Profile:
    """Samples of one kind of process, from py-spy's raw lines (`frame;frame;... count`)."""

    processes: int = 0
    samples: int = 0
    stacks: Counter[Frames] = field(default_factory=Counter)

    def add_raw(self, text: str) -> None:
        self.processes += 1
        for line in text.splitlines():
            frames, _, count = line.rpartition(" ")
            if frames and count.isdigit():
                stack = [f for f in frames.split(";") if not _PROCESS_FRAME.match(f)]
                self.stacks[tuple(stack)] += int(count)
                self.samples += int(count)

    def roots(self) -> dict[str, Frames]:
        """Per thread entry (the first frame), the frames all of its samples share."""
        by_entry: defaultdict[str, list[Frames]] = defaultdict(list)
        for stack in self.stacks:
            by_entry[stack[0]].append(stack)
        return {entry: _common_prefix(stacks) for entry, stacks in by_entry.items()}

    def trimmed(self) -> Counter[Frames]:
        """Each sample from below its thread's shared root and the loop's dispatch."""
        roots = self.roots()
        result: Counter[Frames] = Counter()
        for stack, count in self.stacks.items():
            root = roots[stack[0]]
            rest = stack[len(root) :]
            if _LOOP_DISPATCH in rest:
                rest = rest[len(rest) - rest[::-1].index(_LOOP_DISPATCH) :]
            result[rest or (f"(own time of {root[-1]})",)] += count
        return result

    def table(self, top: int) -> list[tuple[str, float, float]]:
        """(function, inclusive share, own share), most inclusive first.

        Frames that are on exactly the same samples (a chain of middlewares that each call
        the next) are one row, named by the outermost and the innermost of the chain.
        """
        stacks = list(self.trimmed().items())
        on: defaultdict[str, set[int]] = defaultdict(set)  # frame -> the samples it is on
        own: Counter[str] = Counter()
        for index, (stack, count) in enumerate(stacks):
            for frame in stack:
                on[frame].add(index)  # a set: a recursive function counts once per sample
            own[stack[-1]] += count
        chains: defaultdict[frozenset[int], list[str]] = defaultdict(list)
        for frame, samples in on.items():
            chains[frozenset(samples)].append(frame)
        rows = []
        total = self.samples or 1
        for where, frames in chains.items():
            first = stacks[min(where)][0]
            frames.sort(key=first.index)
            name = frames[0] if len(frames) == 1 else f"{frames[0]} ... {frames[-1]}"
            if len(frames) > 2:
                name += f" ({len(frames)} frames)"
            inclusive = sum(stacks[i][1] for i in where)
            rows.append((name, inclusive / total, own[frames[-1]] / total))
        rows.sort(key=lambda row: -row[1])
        return rows[:top]


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: pip install -e '.[dev]'")
    return found


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # the command may hold spaces and parentheses: the fields follow the last ")"
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return parents


def _is_python(pid: int) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name.startswith("python")
    except OSError:
        return False


def _python_roots(ancestors: list[int]) -> set[int]:
    """Python processes under `ancestors` (through bwrap) whose parent is not Python."""
    parents = _parents()
    children: defaultdict[int, list[int]] = defaultdict(list)
    for pid, parent in parents.items():
        children[parent].append(pid)
    found, todo = set(), list(ancestors)
    while todo:
        for child in children[todo.pop()]:
            if _is_python(child) and not _is_python(parents[child]):
                found.add(child)
            else:
                todo.append(child)
    return found


def long_lived_pythons(workers: list[int]) -> list[int]:
    """Python processes the workers keep under them (a fork server), not one job's."""
    before = _python_roots(workers)
    time.sleep(_LONG_LIVED_S)
    return sorted(before & _python_roots(workers))


def record(pid: int, rate: int, output: Path, children: bool) -> subprocess.Popen[bytes]:
    options = ["--format", "raw", "--nolineno", "--gil", "--nonblocking", "--rate", str(rate)]
    if children:
        options.append("--subprocesses")
    return subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), *options, "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def profile_run(
    stack: Stack, work: Path, raw_dir: Path, rounds: int, rate: int
) -> tuple[dict[str, Profile], float]:
    """Record the gateway and workers through `rounds` HumanEval runs; profiles, wall seconds."""
    with Client(stack.url, stack.api_key) as client:  # starts a fork server, if there is one
        client.run_job(JobSpec(language="python", code="print(1)"))
    workers = stack.processes("crucible worker")
    kinds = {
        "gateway": stack.processes("crucible gateway"),
        "worker": workers,
        FORK_SERVER: long_lived_pythons(workers),
    }
    recorders = []
    for kind, pids in kinds.items():
        for pid in pids:
            output = raw_dir / f"{kind.split()[0]}-{pid}.txt"
            recorders.append((kind, output, record(pid, rate, output, kind == FORK_SERVER)))
    time.sleep(_ATTACH_S)
    samples = write_canonical_samples(work / "samples.jsonl")
    started = time.perf_counter()
    for number in range(1, rounds + 1):
        elapsed_s, passed = crucible_round(stack, samples)
        print(f"[profile] round {number}/{rounds}: {elapsed_s:.2f} s, {passed} passed", flush=True)
    wall_s = time.perf_counter() - started
    profiles = {kind: Profile() for kind in kinds}
    for kind, output, process in recorders:
        process.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        _, stderr = process.communicate(timeout=30)
        if not output.exists():
            raise SystemExit(f"py-spy wrote nothing for {kind}: {stderr.decode(errors='replace')}")
        profiles[kind].add_raw(output.read_text())
    return profiles, wall_s


def render(profiles: dict[str, Profile], wall_s: float, rate: int, top: int) -> str:
    lines = []
    for kind, found in profiles.items():
        if not found.processes:
            continue  # no fork server: every job is a fresh interpreter
        busy = found.samples / (rate * wall_s * max(1, found.processes))
        plural = "es" if found.processes > 1 else ""
        lines += [
            f"### {kind} ({found.processes} process{plural}: {found.samples:,} samples at "
            f"{rate} Hz over {wall_s:.1f} s, holding the GIL {busy:.0%} of the time)",
            "",
            "| function | inclusive | own |",
            "|---|---|---|",
            *(f"| `{f}` | {inc:.0%} | {own:.0%} |" for f, inc, own in found.table(top)),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="HumanEval runs while recording")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--top", type=int, default=15, help="functions per kind of process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    options = parser.parse_args()
    raw_dir = options.out / "profile-raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for old in raw_dir.glob("*.txt"):  # another run's processes
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="crucible-profile-") as folder:
        work = Path(folder)
        (work / "stack").mkdir()
        print(f"[profile] starting crucible up with {options.workers} workers", flush=True)
        stack = start_stack(work / "stack", workers=options.workers)
        try:
            profiles, wall_s = profile_run(stack, work, raw_dir, options.rounds, options.rate)
        finally:
            stack.stop()
    text = render(profiles, wall_s, options.rate, options.top)
    (options.out / "profile.md").write_text(text)
    print("\n" + text + f"\nwritten to {options.out / 'profile.md'} (raw stacks: {raw_dir})")


if __name__ == "__main__":
    main()
