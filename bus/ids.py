"""Job and run ids: subject-safe, unguessable and sortable by creation time."""

import re
import secrets
import time

# A millisecond timestamp first, so that ids sort by creation; 80 random bits after it, so
# that ids cannot be guessed (another tenant's id still answers 404, but guessing is moot).
_TIMESTAMP_HEX = 12
_RANDOM_BYTES = 10

ID_PATTERN = re.compile(r"^[jr]-[0-9a-f]{32}$")


def _new_id(prefix: str) -> str:
    return (
        f"{prefix}-{int(time.time() * 1000):0{_TIMESTAMP_HEX}x}{secrets.token_hex(_RANDOM_BYTES)}"
    )


def new_job_id() -> str:
    """A fresh job id, e.g. `j-018f3c...`."""
    return _new_id("j")


def new_run_id() -> str:
    """A fresh run id, e.g. `r-018f3c...`."""
    return _new_id("r")


def is_valid_id(value: str) -> bool:
    """True when `value` has the shape of a job or run id (and so is safe in a subject)."""
    return ID_PATTERN.fullmatch(value) is not None
