"""Checks on a job spec beyond its schema: sizes (413), languages, limits and file names (422)."""

from __future__ import annotations

from pathlib import PurePosixPath

from fastapi import HTTPException, status

from bus import JobSpec
from gateway.settings import GatewaySettings
from sandbox import LANGUAGES, RUNTIMES

_MAX_FILE_NAME_CHARS = 255


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


def check_spec(spec: JobSpec, settings: GatewaySettings) -> None:
    """Raise the HTTP error that tells the client what to fix; return when the spec is fine."""
    code_bytes = len(spec.code.encode())
    if code_bytes > settings.max_code_bytes:
        raise _too_large("code", code_bytes, settings.max_code_bytes)
    stdin_bytes = len(spec.stdin.encode())
    if stdin_bytes > settings.max_stdin_bytes:
        raise _too_large("stdin", stdin_bytes, settings.max_stdin_bytes)
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
    ceilings = settings.ceilings.model_dump()
    for name, value in spec.limits.model_dump().items():
        if value > ceilings[name]:
            raise _unprocessable(
                f"limits.{name} = {value} is above this gateway's ceiling of {ceilings[name]}"
            )
