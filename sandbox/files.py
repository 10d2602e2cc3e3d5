"""Job file names: relative paths that stay inside the work dir, checked by every backend."""

from __future__ import annotations

from pathlib import PurePosixPath

MAX_FILES = 256


def check_file_names(names: list[str], entry_file: str) -> None:
    """Raise ValueError for any name that could leave the work dir or replace the job's code.

    The gateway checks first; this is the last line of defence in front of the filesystem.
    """
    if len(names) >= MAX_FILES:
        raise ValueError(f"{len(names)} files; at most {MAX_FILES - 1}")
    for name in names:
        if (
            not name
            or PurePosixPath(name).is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))
            or "\x00" in name
        ):
            raise ValueError(f"file name {name!r} is not a relative path inside the work dir")
        if name == entry_file:
            raise ValueError(f"file name {name!r} is reserved for the job's code")
