"""Job and run ids: subject-safe, unguessable and sortable by creation time."""

import re
import secrets
import time

# A millisecond timestamp first, so that ids sort by creation; 80 random bits after it, so
# that ids cannot be guessed (another tenant's id still answers 404, but guessing is moot).
_TIMESTAMP_HEX = 12
_RANDOM_BYTES = 10

# A run's jobs keep their records in pages (one KV value per page): such a job's id is its
# page's id and its place in the page, `j-<32 hex>-<4 hex>`.
_PAGE_INDEX_HEX = 4
MAX_JOBS_PER_PAGE = 16**_PAGE_INDEX_HEX
ID_PATTERN = re.compile(r"^(r-[0-9a-f]{32}|j-[0-9a-f]{32}(-[0-9a-f]{4})?)$")


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


def paged_job_id(page_id: str, index: int) -> str:
    """The id of the job at `index` in the record page `page_id` (a `new_job_id()`)."""
    if not 0 <= index < MAX_JOBS_PER_PAGE:
        raise ValueError(f"a record page holds at most {MAX_JOBS_PER_PAGE} jobs, not {index + 1}")
    return f"{page_id}-{index:0{_PAGE_INDEX_HEX}x}"


def page_of(job_id: str) -> tuple[str, int] | None:
    """The record page and index of a paged job id; None for a job with a record of its own."""
    page_id, dash, index = job_id.rpartition("-")
    if not dash or len(index) != _PAGE_INDEX_HEX or not page_id.startswith("j-"):
        return None
    return page_id, int(index, 16)


def is_valid_id(value: str) -> bool:
    """True when `value` has the shape of a job or run id (and so is safe in a subject)."""
    return ID_PATTERN.fullmatch(value) is not None
