"""What a benchmark shows of a stack's log when one of its requests broke."""

from __future__ import annotations

import json

from bench.stack_errors import distinct_errors


def record(level: str, message: str, exception: str | None = None) -> str:
    fields = {"level": level, "service": "gateway", "message": message}
    if exception is not None:
        fields["exception"] = exception
    return json.dumps(fields, separators=(",", ":"))


def test_errors_are_counted_by_message_and_cause_and_the_rest_left_out() -> None:
    timeout = "Traceback ...\n  File x\nnats.errors.TimeoutError: nats: timeout"
    log = "\n".join(
        [
            record("INFO", "started"),
            record("ERROR", "Exception in ASGI application\n", timeout),
            "[123] 2026/12/01 [INF] a nats-server line",
            record("ERROR", "Exception in ASGI application\n", timeout),
            record("ERROR", "shutdown exceeded"),
            '{"level":"ERROR", not json',
        ]
    )
    assert distinct_errors(log) == [
        "2 x gateway: Exception in ASGI application: nats.errors.TimeoutError: nats: timeout",
        "1 x gateway: shutdown exceeded",
    ]
