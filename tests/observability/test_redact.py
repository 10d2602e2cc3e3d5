"""A stream token's value never reaches a log line."""

from __future__ import annotations

import logging

import pytest

from observability.redact import RedactUrls, redact_url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("/v1/jobs/j-1/events?token=job:j-1.t.9.sig", "/v1/jobs/j-1/events?token=REDACTED"),
        ("/e?last_event_id=4&token=a.b&x=1", "/e?last_event_id=4&token=REDACTED&x=1"),
        ("/e?notoken=keep&mytoken=keep", "/e?notoken=keep&mytoken=keep"),
        ("/v1/jobs/j-1", "/v1/jobs/j-1"),
        # Percent-encoded letters name the same parameter to the gateway.
        ("/e?%74oken=s3cret", "/e?%74oken=REDACTED"),
        ("/e?x=1&%74%6F%6b%65%6e=s3cret", "/e?x=1&%74%6F%6b%65%6e=REDACTED"),
    ],
)
def test_only_token_values_are_redacted(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_an_access_line_is_redacted() -> None:
    record = logging.makeLogRecord(
        {
            "msg": '%s - "%s %s HTTP/%s" %d',
            "args": ("127.0.0.1:5", "GET", "/e?token=s3cret", "1.1", 200),
        }
    )
    assert RedactUrls().filter(record)
    assert "s3cret" not in record.getMessage()
    assert "/e?token=REDACTED" in record.getMessage()
