"""Log lines: JSON with service, trace, span and job ids; uvicorn's records in the same format."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_span_id, format_trace_id

from observability import job_id_var
from observability.logging import JsonFormatter, TextFormatter

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    """A logger of its own writing to a StringIO, so the root logging of pytest is untouched."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.observability.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_trace_span_and_job_ids(logged: Any) -> None:
    logger, stream, handler = logged
    handler.setFormatter(JsonFormatter("worker"))
    token = job_id_var.set("j-123")
    try:
        with TracerProvider().get_tracer("t").start_as_current_span("work") as span:
            logger.info("job %s", "started", extra={"attempt": 2})
    finally:
        job_id_var.reset(token)
    [line] = json_lines(stream)
    context = span.get_span_context()
    assert line == {
        "time": line["time"],
        "level": "INFO",
        "service": "worker",
        "logger": "tests.observability.logging",
        "message": "job started",
        "trace_id": format_trace_id(context.trace_id),
        "span_id": format_span_id(context.span_id),
        "job_id": "j-123",
        "attempt": 2,
    }
    assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)


def test_outside_a_span_and_a_job_there_are_no_ids(logged: Any) -> None:
    logger, stream, handler = logged
    handler.setFormatter(JsonFormatter("gateway"))
    logger.warning("idle")
    [line] = json_lines(stream)
    assert {"trace_id", "span_id", "job_id"}.isdisjoint(line)


def test_extra_job_id_wins_and_extras_cannot_forge_core_fields(logged: Any) -> None:
    logger, stream, handler = logged
    handler.setFormatter(JsonFormatter("worker"))
    token = job_id_var.set("from-context")
    try:
        logger.info("x", extra={"job_id": "from-extra", "service": "forged", "level": "DEBUG"})
    finally:
        job_id_var.reset(token)
    [line] = json_lines(stream)
    assert (line["job_id"], line["service"], line["level"]) == ("from-extra", "worker", "INFO")


def test_unserialisable_extras_become_strings_and_exceptions_are_kept(logged: Any) -> None:
    logger, stream, handler = logged
    handler.setFormatter(JsonFormatter("worker"))
    try:
        raise RuntimeError("sandbox broke")
    except RuntimeError:
        logger.exception("failed", extra={"path": Path("/tmp/x"), "huge": 2**80})
    [line] = json_lines(stream)
    assert line["path"] == "/tmp/x" and line["huge"] == str(2**80)
    assert line["exception"].startswith("Traceback")
    assert "RuntimeError: sandbox broke" in line["exception"]


def test_text_format_has_the_same_fields(logged: Any) -> None:
    logger, stream, handler = logged
    handler.setFormatter(TextFormatter("worker"))
    token = job_id_var.set("j-9")
    try:
        with TracerProvider().get_tracer("t").start_as_current_span("work") as span:
            logger.info("started", extra={"attempt": 2})
    finally:
        job_id_var.reset(token)
    text = stream.getvalue()
    trace_id = format_trace_id(span.get_span_context().trace_id)
    assert " INFO    worker tests.observability.logging: started " in text
    for field in (f"trace_id={trace_id}", "job_id=j-9", "attempt=2", "span_id="):
        assert field in text


SETUP_PROGRAM = """
import logging, logging.config
from uvicorn.config import LOGGING_CONFIG
from observability import setup_logging

# What uvicorn installs on start: its own handlers, propagation off, plus a stray root handler.
logging.config.dictConfig(LOGGING_CONFIG)
logging.getLogger().addHandler(logging.StreamHandler())
setup_logging("crucible-gateway", level="DEBUG")
logging.getLogger("uvicorn.error").info("Started server process")
access = logging.getLogger("uvicorn.access")
access.info('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", "/", "1.1", 200)
logging.getLogger("workers.worker").debug("polling")
"""


def test_setup_logging_replaces_handlers_and_formats_uvicorn() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SETUP_PROGRAM)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=True,
    )
    assert done.stdout == ""
    # Every stderr line is one JSON object: no duplicate from the stray handler, no uvicorn format.
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("uvicorn.error", "INFO"),
        ("uvicorn.access", "INFO"),
        ("workers.worker", "DEBUG"),
    ]
    assert {line["service"] for line in lines} == {"crucible-gateway"}
    assert lines[1]["message"] == '1.2.3.4 - "GET / HTTP/1.1" 200'
