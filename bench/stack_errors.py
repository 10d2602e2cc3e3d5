"""The distinct errors in a `crucible up` log: what to show when a benchmark's request broke."""

from __future__ import annotations

import json
from collections import Counter

_SHOWN = 5


def distinct_errors(log: str) -> list[str]:
    """Each distinct ERROR record (service, message, the exception's last line), with a count."""
    found: Counter[str] = Counter()
    for line in log.splitlines():
        if '"level":"ERROR"' not in line.replace(" ", ""):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line some child printed that only looks like a log record
        exception = str(record.get("exception", "")).strip().splitlines()
        cause = f": {exception[-1]}" if exception else ""
        found[f"{record.get('service', '?')}: {str(record.get('message', '')).strip()}{cause}"] += 1
    return [f"{count} x {text}" for text, count in found.most_common(_SHOWN)]
