"""Per-key rate limits: a token bucket for each API key, refilled continuously.

Each gateway process keeps its own buckets; behind a load balancer with G gateways a key may
reach G times the rate. The queue cap per tenant (in JetStream) is shared by all of them.
"""

from __future__ import annotations

import math
import time

from pydantic import BaseModel, Field

_MAX_KEYS = 10_000  # buckets kept before the full ones are forgotten


class RateLimitSettings(BaseModel):
    """`CRUCIBLE_RATE_LIMIT__REQUESTS_PER_S` and `CRUCIBLE_RATE_LIMIT__BURST`."""

    requests_per_s: float = Field(100.0, gt=0)
    burst: int = Field(200, ge=1)


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now


class RateLimiter:
    """`take(key)` spends one request of `key`'s budget, or says how long until there is one."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self._rate = settings.requests_per_s
        self._burst = float(settings.burst)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """0 when the request may go ahead; otherwise the seconds to wait before retrying."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_KEYS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: a new one would start full as well. Keys may
        be client addresses, which anyone can have many of."""
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self._rate < self._burst
        }


def retry_after_header(wait_s: float) -> str:
    """`Retry-After` is whole seconds; round up so that a client retrying on time succeeds."""
    return str(max(1, math.ceil(wait_s)))
