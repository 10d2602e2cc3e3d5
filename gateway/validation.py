"""Checks on a job spec beyond its schema: sizes (413), languages, limits and file names (422)."""

from __future__ import annotations

from pathlib import PurePosixPath

import orjson
from fastapi import HTTPException, status
from pydantic import JsonValue

from bus import JobSpec, Limits
from gateway.settings import GatewaySettings
from sandbox import LANGUAGES, RUNTIMES

_MAX_FILE_NAME_CHARS = 255
_LIMIT_NAMES = tuple(Limits.model_fields)


def _too_large(what: str, size: int, limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"{what} is {size} bytes; this gateway accepts at most {limit} bytes",
    )


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _check_file_name(name: str) -> None:
    path = PurePosixPath(name)
    # Names must stay inside the work dir: no absolute paths, no `..`, no hidden tricks.
    if (
        not name
        or len(name) > _MAX_FILE_NAME_CHARS
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or "\x00" in name
    ):
        raise _unprocessable(
            f"file name {name!r} must be a relative path inside the work dir (no '..', no '/')"
        )


def _check_cases(spec: JobSpec, settings: GatewaySettings) -> None:
    assert spec.tests is not None
    if spec.stdin or spec.expected_stdout is not None:
        raise _unprocessable(
            "a job with tests takes each case's stdin and expected_stdout from tests[]: "
            "leave the job's own stdin and expected_stdout unset"
        )
    if len(spec.tests) > settings.max_cases:
        raise _unprocessable(f"{len(spec.tests)} tests; at most {settings.max_cases} allowed")
    # Inputs and expected outputs of all cases together, under the single-stdin bound each.
    inputs = sum(len(case.stdin.encode()) for case in spec.tests)
    if inputs > settings.max_stdin_bytes:
        raise _too_large("tests[].stdin", inputs, settings.max_stdin_bytes)
    outputs = sum(len(case.expected_stdout.encode()) for case in spec.tests)
    if outputs > settings.max_stdin_bytes:
        raise _too_large("tests[].expected_stdout", outputs, settings.max_stdin_bytes)


def with_default_limits(spec: JobSpec, settings: GatewaySettings) -> JobSpec:
    """The spec with the operator's default limits when the client named none."""
    if "limits" in spec.model_fields_set:
        return spec  # frozen: the same spec serves as well as a copy
    return spec.model_copy(update={"limits": settings.default_limits})


def check_metadata(metadata: dict[str, JsonValue], settings: GatewaySettings) -> None:
    """413 for metadata larger, as JSON, than the gateway keeps."""
    if metadata:
        try:
            size = len(orjson.dumps(metadata))
        except orjson.JSONEncodeError as exc:
            raise _unprocessable(f"metadata cannot be stored as JSON: {exc}") from exc
        if size > settings.max_metadata_bytes:
            raise _too_large("metadata", size, settings.max_metadata_bytes)


def check_spec(spec: JobSpec, settings: GatewaySettings) -> None:
    """Raise the HTTP error that tells the client what to fix; return when the spec is fine."""
    check_metadata(spec.metadata, settings)
    # Text that JSON allows and UTF-8 does not (a lone surrogate) could not be sent on: the
    # UnicodeEncodeError is a 422 (gateway/errors.py). Code, stdin and files are encoded below.
    for text in (*spec.args, *spec.files, spec.expected_stdout or ""):
        text.encode()
    code_bytes = len(spec.code.encode())
    if code_bytes > settings.max_code_bytes:
        raise _too_large("code", code_bytes, settings.max_code_bytes)
    stdin_bytes = len(spec.stdin.encode())
    if stdin_bytes > settings.max_stdin_bytes:
        raise _too_large("stdin", stdin_bytes, settings.max_stdin_bytes)
    if spec.tests is not None:
        _check_cases(spec, settings)
    files_bytes = sum(len(content.encode()) for content in spec.files.values())
    if files_bytes > settings.max_code_bytes:
        raise _too_large("files", files_bytes, settings.max_code_bytes)
    if spec.language not in LANGUAGES:
        raise _unprocessable(
            f"unknown language {spec.language!r}; known: {', '.join(sorted(LANGUAGES))}"
        )
    if len(spec.files) > settings.max_files:
        raise _unprocessable(f"{len(spec.files)} files; at most {settings.max_files} allowed")
    entry_file = RUNTIMES[spec.language].entry_file
    for name in spec.files:
        _check_file_name(name)
        if name == entry_file:
            raise _unprocessable(
                f"file name {name!r} is where {spec.language} code goes: rename it"
            )
    for name in _LIMIT_NAMES:  # attribute by attribute: two model_dump()s per job cost more
        value, ceiling = getattr(spec.limits, name), getattr(settings.ceilings, name)
        if value > ceiling:
            raise _unprocessable(
                f"limits.{name} = {value} is above this gateway's ceiling of {ceiling}"
            )
