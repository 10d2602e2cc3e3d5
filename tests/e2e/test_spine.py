"""One job from HTTP through NATS and a real sandbox back to the client over SSE."""

from __future__ import annotations

import httpx
import pytest

from tests.sse_client import run_job, stream, submit
from tests.stack import Stack

TICKS = "import time\nfor i in range(4):\n    print('tick', i)\n    time.sleep(0.3)\n"


def test_ticks_stream_live_and_finish_accepted(stack: Stack) -> None:
    accepted = submit(stack, {"language": "python", "code": TICKS})
    assert accepted["status"] == "queued"
    assert accepted["id"].startswith("j-") and accepted["run_id"].startswith("r-")
    events = stream(accepted["events_url"])  # no header: the signed URL is enough

    kinds = [e.event for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "finished"
    ticks = [e for e in events if e.event == "stdout"]
    # Output is streamed as produced, a chunk per print, not delivered in one lump at the end.
    assert len(ticks) >= 2
    assert "".join(e.data["data"] for e in ticks) == "".join(f"tick {i}\n" for i in range(4))
    offsets = [e.data["offset"] for e in ticks]
    assert offsets == sorted(offsets) and offsets[0] == 0
    ids = [int(e.id) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    finished = events[-1].data
    assert finished["verdict"] == "accepted"
    assert finished["status"] == "finished"
    assert finished["exit_code"] == 0
    assert finished["attempts"] == 1
    assert finished["stdout"].count("tick") == 4

    job = httpx.get(accepted["url"], headers=stack.headers()).json()
    assert job["status"] == "finished" and job["verdict"] == "accepted"
    assert job["timings"]["wall_time_s"] > 0 and job["memory_peak_mb"] > 0


@pytest.mark.parametrize(
    ("spec", "verdict"),
    [
        ({"code": "import sys\nprint('bad', file=sys.stderr)\nsys.exit(3)"}, "runtime_error"),
        ({"code": "raise ValueError('boom')"}, "runtime_error"),
        (
            {"code": "while True: pass", "limits": {"wall_time_s": 1, "cpu_time_s": 10}},
            "time_limit_exceeded",
        ),
        (
            {"code": "while True: pass", "limits": {"wall_time_s": 10, "cpu_time_s": 1}},
            "time_limit_exceeded",
        ),
        (
            {
                "code": "b = bytearray(400 * 2**20)\nb[::4096] = b'x' * len(b[::4096])",
                "limits": {"memory_mb": 64},
            },
            "memory_limit_exceeded",
        ),
        (
            {"code": "while True: print('x' * 1000)", "limits": {"output_bytes": 10000}},
            "output_limit_exceeded",
        ),
        (
            {"code": "print(input()[::-1])", "stdin": "olleh\n", "expected_stdout": "hello\n"},
            "accepted",
        ),
        ({"code": "print(41)", "expected_stdout": "42\n"}, "wrong_answer"),
    ],
    ids=["exit-3", "exception", "wall", "cpu", "memory", "output", "stdin", "wrong-answer"],
)
def test_verdicts(stack: Stack, spec: dict[str, object], verdict: str) -> None:
    finished = run_job(stack, {"language": "python", **spec})
    assert finished["verdict"] == verdict, finished


def test_runtime_error_reports_exit_code_and_stderr(stack: Stack) -> None:
    finished = run_job(
        stack,
        {"language": "python", "code": "import sys\nprint('bad', file=sys.stderr)\nsys.exit(3)"},
    )
    assert finished["exit_code"] == 3
    assert finished["stderr"] == "bad\n"


def test_output_cap_keeps_output_within_limit(stack: Stack) -> None:
    finished = run_job(
        stack,
        {
            "language": "python",
            "code": "while True: print('x' * 1000)",
            "limits": {"output_bytes": 10000},
        },
    )
    assert len(finished["stdout"]) + len(finished["stderr"]) <= 10000


def test_files_and_args_reach_the_program(stack: Stack) -> None:
    finished = run_job(
        stack,
        {
            "language": "python",
            "code": "import sys, helper\nprint(helper.greet(sys.argv[1]))",
            "files": {"helper.py": "def greet(n):\n    return 'hi ' + n\n"},
            "args": ["ada"],
        },
    )
    assert finished["verdict"] == "accepted" and finished["stdout"] == "hi ada\n"


def test_resume_with_last_event_id_delivers_each_remaining_event_once(stack: Stack) -> None:
    accepted = submit(stack, {"language": "python", "code": TICKS})
    # Disconnect mid-job after two events, then resume from the last one seen.
    first = stream(accepted["events_url"], stop_after=2)
    rest = stream(accepted["events_url"], last_event_id=first[-1].id)
    whole = stream(accepted["events_url"])
    assert first + rest == whole
    # And from every position of the finished job's stream: exactly the events after it.
    for position, event in enumerate(whole):
        resumed = stream(accepted["events_url"], last_event_id=event.id)
        assert resumed == whole[position + 1 :]


def test_runtimes_lists_python_with_its_version(stack: Stack) -> None:
    body = httpx.get(f"{stack.url}/v1/runtimes", headers=stack.headers()).json()
    python = next(r for r in body["runtimes"] if r["language"] == "python")
    assert python["versions"][0].startswith("3.") and python["workers"] >= 1


def test_health_and_readiness(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/healthz").status_code == 200
    ready = httpx.get(f"{stack.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["workers"] == 2
