"""NATS failing under a request (a read timing out under load, a lost connection) is a 503 to
retry with Retry-After, as DESIGN.md says for a bus that is down, never a bare 500."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from gateway.errors import NATS_UNAVAILABLE, install_error_handlers


@pytest.mark.parametrize("error", NATS_UNAVAILABLE, ids=lambda e: e.__name__)
async def test_a_nats_failure_is_503_with_retry_after(error: type[Exception]) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/job")
    async def job() -> None:
        raise error()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/job")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "unavailable" in response.json()["detail"]
