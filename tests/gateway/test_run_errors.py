"""Bad run requests get the same clear errors as jobs (401, 404, 413, 422) and store nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.runs_client import submit_run
from tests.stack import Stack
from tests.tenants import tenant_key

OK = {"language": "python", "code": "print(1)"}


def post_run(stack: Stack, body: object, path: str = "/v1/runs") -> httpx.Response:
    return httpx.post(f"{stack.url}{path}", json=body, headers=stack.headers(), timeout=60)


def run_count(stack: Stack) -> int:
    count, url = 0, f"{stack.url}/v1/runs?limit=1000"
    while url:
        page: dict[str, Any] = httpx.get(url, headers=stack.headers()).json()
        count += len(page["runs"])
        url = page["next_url"]
    return count


@pytest.fixture
def other_tenant(stack: Stack) -> Iterator[dict[str, str]]:
    """Headers of a second tenant's key, added to the live keys file."""
    with tenant_key(stack, "other", "o2") as headers:
        yield headers


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"jobs": []}, "jobs"),
        ({"jobs": [OK] * 10_001}, "10000"),
        ({"jobs": [OK, OK, {"language": "cobol", "code": "x"}]}, "jobs[2]: unknown language"),
        ({"jobs": [OK, {**OK, "limits": {"wall_time_s": 10_000}}]}, "jobs[1]: limits.wall_time_s"),
        ({"jobs": [{**OK, "surprise": 1}]}, "surprise"),
        ({"jobs": [OK], "extra": 1}, "extra"),
        ({"jobs": [{**OK, "compare": "fuzzy"}]}, "compare"),
        ({"jobs": [{**OK, "tests": []}]}, "tests"),
        (
            {"jobs": [{**OK, "stdin": "1", "tests": [{"expected_stdout": "1"}]}]},
            "leave the job's own stdin",
        ),
        ({"jobs": [{**OK, "tests": [{"stdin": "1"}]}]}, "expected_stdout"),
    ],
    ids=[
        "empty",
        "too-many",
        "language",
        "ceiling",
        "unknown-field",
        "unknown-top-field",
        "compare",
        "no-cases",
        "stdin-and-tests",
        "case-without-expected",
    ],
)
def test_invalid_runs_get_422_and_store_nothing(
    stack: Stack, body: dict[str, Any], fragment: str
) -> None:
    before = run_count(stack)
    response = post_run(stack, body)
    assert response.status_code == 422, response.text[:500]
    assert fragment in response.text
    assert run_count(stack) == before


def test_too_large_code_in_a_run_gets_413(stack: Stack) -> None:
    response = post_run(stack, {"jobs": [OK, {**OK, "code": "#" * (1024 * 1024 + 1)}]})
    assert response.status_code == 413 and "jobs[1]: code is" in response.json()["detail"]
    # A run's body may exceed a single job's 4 MiB limit (up to its own, 64 MiB).
    files = {"big.txt": "x" * (1024 * 1024 - 100)}
    big = post_run(stack, {"jobs": [{**OK, "files": files}] * 5})
    assert big.status_code == 202, big.text


def test_appending_bad_jobs_changes_nothing(stack: Stack) -> None:
    accepted = submit_run(stack, [OK])
    bad = post_run(
        stack, {"jobs": [{"language": "cobol", "code": "x"}]}, f"/v1/runs/{accepted['id']}/jobs"
    )
    assert bad.status_code == 422
    run = httpx.get(accepted["url"], headers=stack.headers()).json()
    assert run["total_jobs"] == 1


def test_another_tenants_run_is_404_everywhere(stack: Stack, other_tenant: dict[str, str]) -> None:
    theirs = submit_run(stack, [OK])
    url = theirs["url"]
    for path in ("", "/events", "/results"):
        assert httpx.get(f"{url}{path}", headers=other_tenant).status_code == 404
    appended = httpx.post(f"{url}/jobs", json={"jobs": [OK]}, headers=other_tenant)
    assert appended.status_code == 404
    listed = httpx.get(f"{stack.url}/v1/runs", headers=other_tenant).json()
    assert theirs["id"] not in [run["id"] for run in listed["runs"]]
    for missing in (f"r-{'0' * 32}", "not-an-id", theirs["job_ids"][0]):
        response = httpx.get(f"{stack.url}/v1/runs/{missing}", headers=stack.headers())
        assert response.status_code == 404 and "not found" in response.json()["detail"]


def test_run_endpoints_need_a_key_or_the_runs_own_token(stack: Stack) -> None:
    accepted = submit_run(stack, [OK])
    assert httpx.post(f"{stack.url}/v1/runs", json={"jobs": [OK]}).status_code == 401
    assert httpx.get(accepted["url"]).status_code == 401
    assert httpx.get(f"{stack.url}/v1/runs").status_code == 401
    bare = accepted["events_url"].split("?")[0]
    assert httpx.get(bare).status_code == 401
    job = httpx.post(f"{stack.url}/v1/jobs", json=OK, headers=stack.headers()).json()
    job_token = job["events_url"].split("?token=")[1]
    assert httpx.get(f"{bare}?token={job_token}").status_code == 401  # scoped to that job
    bad_resume = httpx.get(accepted["events_url"], headers={"Last-Event-ID": "x"})
    assert bad_resume.status_code == 422
    bad_k = httpx.get(accepted["url"], params={"k": "0"}, headers=stack.headers())
    assert bad_k.status_code == 422 and "k must be" in bad_k.json()["detail"]
