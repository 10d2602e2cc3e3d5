"""Bad input gets a clear error and changes nothing: 401, 404, 413, 422."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.sse_client import submit
from tests.stack import Stack
from tests.tenants import tenant_key

OK_SPEC = {"language": "python", "code": "print(1)"}


def post(stack: Stack, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/jobs", json=body, headers=headers or stack.headers())


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong-key", "wrong-scheme", "empty"],
)
def test_requests_without_a_valid_key_get_401(stack: Stack, headers: dict[str, str]) -> None:
    response = httpx.post(f"{stack.url}/v1/jobs", json=OK_SPEC, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert (
        "key" in response.json()["detail"].lower() or "bearer" in response.json()["detail"].lower()
    )
    assert httpx.get(f"{stack.url}/v1/runtimes", headers=headers).status_code == 401


def test_event_stream_needs_a_valid_token_for_that_job(stack: Stack) -> None:
    first, second = submit(stack, OK_SPEC), submit(stack, OK_SPEC)
    bare = first["events_url"].split("?")[0]
    assert httpx.get(bare).status_code == 401
    assert httpx.get(bare + "?token=forged.local.9999999999.abc").status_code == 401
    other_token = second["events_url"].split("?token=")[1]
    assert httpx.get(f"{bare}?token={other_token}").status_code == 401
    # A token that was tampered with (its expiry pushed out) is refused too.
    scope, tenant, expiry, signature = first["events_url"].split("?token=")[1].rsplit(".", 3)
    tampered = f"{scope}.{tenant}.{int(expiry) + 1000}.{signature}"
    assert httpx.get(f"{bare}?token={tampered}").status_code == 401


def test_another_tenants_job_is_404_everywhere(stack: Stack) -> None:
    theirs = submit(stack, OK_SPEC)
    with tenant_key(stack, "other", "o1") as mine:
        assert httpx.get(theirs["url"], headers=mine).status_code == 404
        assert httpx.get(f"{theirs['url']}/events", headers=mine).status_code == 404
        cancel = httpx.post(f"{theirs['url']}/cancel", headers=mine)
        assert cancel.status_code == 404
        missing = httpx.get(f"{stack.url}/v1/jobs/j-{'0' * 32}", headers=mine)
        assert missing.status_code == 404 and "not found" in missing.json()["detail"]
        assert httpx.get(f"{stack.url}/v1/jobs/not-an-id", headers=mine).status_code == 404


def test_oversized_bodies_and_code_get_413(stack: Stack) -> None:
    huge = post(stack, {**OK_SPEC, "code": "#" * (5 * 1024 * 1024)})
    assert huge.status_code == 413 and "request body is" in huge.json()["detail"]
    big_code = post(stack, {**OK_SPEC, "code": "#" * (1024 * 1024 + 1)})
    assert big_code.status_code == 413 and "code is" in big_code.json()["detail"]
    chunked = httpx.post(
        f"{stack.url}/v1/jobs",
        content=iter([json.dumps(OK_SPEC).encode()[:-1], b" " * (5 * 1024 * 1024), b"}"]),
        headers={**stack.headers(), "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"language": "cobol", "code": "x"}, "unknown language"),
        ({**OK_SPEC, "limits": {"wall_time_s": 10_000}}, "ceiling"),
        ({**OK_SPEC, "limits": {"memory_mb": -1}}, "memory_mb"),
        ({**OK_SPEC, "surprise": 1}, "surprise"),
        ({**OK_SPEC, "limits": {"wall_time": 1}}, "wall_time"),
        ({"language": "python"}, "code"),
        ({**OK_SPEC, "files": {"../escape.py": "x"}}, "relative path"),
        ({**OK_SPEC, "files": {"/etc/passwd": "x"}}, "relative path"),
        ({**OK_SPEC, "stdin": 5}, "stdin"),
        ({**OK_SPEC, "files": {"main.py": "x"}}, "rename it"),
    ],
    ids=[
        "language",
        "ceiling",
        "negative",
        "unknown-field",
        "unknown-limit",
        "no-code",
        "dotdot",
        "absolute",
        "stdin-type",
        "entry-file",
    ],
)
def test_invalid_specs_get_422_saying_what_to_fix(
    stack: Stack, body: object, fragment: str
) -> None:
    response = post(stack, body)
    assert response.status_code == 422, response.text
    assert fragment in response.text


def test_malformed_json_gets_422(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.url}/v1/jobs",
        content=b"{not json",
        headers={**stack.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_bad_last_event_id_gets_422(stack: Stack) -> None:
    accepted = submit(stack, OK_SPEC)
    response = httpx.get(accepted["events_url"], headers={"Last-Event-ID": "abc"})
    assert response.status_code == 422 and "Last-Event-ID" in response.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"language": "python", "code": "x", "limits": {"wall_time_s": NaN}}', "wall_time_s"),
        (b'{"language": "python", "code": "print(1)\\ud800"}', "Unicode"),
        (b'{"language": "python", "code": "x", "args": ["\\ud800"]}', "Unicode"),
        (b'{"language": "python", "code": "x", "metadata": {"k": "\\ud800"}}', "metadata"),
    ],
    ids=["nan-limit", "surrogate-code", "surrogate-arg", "surrogate-metadata"],
)
def test_json_that_is_not_valid_data_gets_422_not_500(
    stack: Stack, raw: bytes, fragment: str
) -> None:
    # Python's JSON takes NaN and lone surrogates (\ud800); neither can be stored or sent on.
    response = httpx.post(
        f"{stack.url}/v1/jobs",
        content=raw,
        headers={**stack.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert fragment in response.text


def test_metadata_beyond_the_cap_gets_413_for_jobs_and_runs(stack: Stack) -> None:
    big = {"notes": "x" * (17 * 1024)}
    assert post(stack, {**OK_SPEC, "metadata": big}).status_code == 413
    run = httpx.post(
        f"{stack.url}/v1/runs", json={"jobs": [OK_SPEC], "metadata": big}, headers=stack.headers()
    )
    assert run.status_code == 413 and "metadata" in run.json()["detail"], run.text


def test_a_last_event_id_of_unicode_digits_gets_422(stack: Stack) -> None:
    accepted = submit(stack, OK_SPEC)
    response = httpx.get(accepted["events_url"] + "&last_event_id=%C2%B2")
    assert response.status_code == 422, response.text


def test_a_run_records_page_id_is_no_job(stack: Stack) -> None:
    # A run's job ids are its page's id and an index; the page's own id names no job.
    run = httpx.post(f"{stack.url}/v1/runs", json={"jobs": [OK_SPEC]}, headers=stack.headers())
    assert run.status_code == 202, run.text
    job_id = run.json()["job_ids"][0] if "job_ids" in run.json() else None
    assert job_id is not None, run.text
    page_id = job_id.rsplit("-", 1)[0]
    response = httpx.get(f"{stack.url}/v1/jobs/{page_id}", headers=stack.headers())
    assert response.status_code == 404, response.text
