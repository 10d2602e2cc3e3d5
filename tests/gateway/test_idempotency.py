"""Idempotency-Key on POST /v1/jobs: a retried submission is the same job, never a second."""

from __future__ import annotations

import uuid

import httpx

from tests.stack import Stack

SPEC = {"language": "python", "code": "print('once')"}


def post(stack: Stack, key: str, body: object = SPEC) -> httpx.Response:
    headers = {**stack.headers(), "Idempotency-Key": key}
    return httpx.post(f"{stack.url}/v1/jobs", json=body, headers=headers)


def test_the_same_key_and_body_is_one_job(stack: Stack) -> None:
    key = str(uuid.uuid4())
    first, second = post(stack, key), post(stack, key)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert post(stack, str(uuid.uuid4())).json()["id"] != first.json()["id"]  # a new key: new job


def test_the_same_key_with_another_body_is_refused(stack: Stack) -> None:
    key = str(uuid.uuid4())
    assert post(stack, key).status_code == 202
    other = post(stack, key, {**SPEC, "code": "print('twice')"})
    assert other.status_code == 422 and "different request" in other.json()["detail"]


def test_an_overlong_key_is_refused(stack: Stack) -> None:
    response = post(stack, "k" * 256)
    assert response.status_code == 422 and "Idempotency-Key" in response.text
